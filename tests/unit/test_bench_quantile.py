"""The latency run's estimate of a histogram's quantiles, as Prometheus's histogram_quantile makes it."""

import math

from benchmarks.bench import bucket_quantile

INF = float("inf")


def test_a_quantile_is_placed_on_a_line_within_the_bucket_that_holds_it() -> None:
    buckets = [(1.0, 0.0), (2.0, 50.0), (3.0, 100.0), (INF, 100.0)]
    assert bucket_quantile(0.5, buckets) == 2.0
    assert math.isclose(bucket_quantile(0.99, buckets), 2.98)
    assert math.isclose(bucket_quantile(0.75, buckets), 2.5)


def test_the_first_bucket_starts_at_zero() -> None:
    assert math.isclose(bucket_quantile(0.5, [(0.25, 10.0), (0.5, 10.0), (INF, 10.0)]), 0.125)


def test_a_quantile_in_the_last_bucket_is_its_largest_finite_bound() -> None:
    assert bucket_quantile(0.9, [(1.0, 10.0), (5.0, 15.0), (INF, 20.0)]) == 5.0


def test_an_empty_histogram_has_no_quantile() -> None:
    assert math.isnan(bucket_quantile(0.5, [(1.0, 0.0), (INF, 0.0)]))
    assert math.isnan(bucket_quantile(0.5, []))
