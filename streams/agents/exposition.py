"""The Prometheus text exposition of the worker's large families, written fast, and the supervisor's merge of its
processes' pages without parsing what needs no summing.

At the label cap (500 segments x 5 metrics x 3 windows, every KPI with its eight additive components) a worker's
page is 82,500 lines, 9.2 MB.  prometheus_client renders it in 1.0 s and parses it back in 5.9 s, and the
supervisor did both at every scrape (8.4 s, measured with ``benchmarks/metrics_page.py``).  Here:

- :func:`render` writes families in the text format with one f-string per sample (0.39 s for that page);
- :func:`blocks` cuts a page into its families without parsing samples, so the supervisor parses and sums only
  the families that more than one process exports (counters of the hot-path slots, readiness) and passes the
  rest (the KPI and effort gauges, which one process owns) through as they are.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.metrics_core import Metric
from prometheus_client.utils import floatToGoString

_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n", '"': '\\"'})


def number(value: float) -> str:
    """A sample value as prometheus_client writes it (``1.0``, ``+Inf``, ``1.5e+06``)."""
    return str(floatToGoString(value))  # type: ignore[no-untyped-call]  # prometheus_client, untyped


def _label_value(value: str) -> str:
    return value.translate(_ESCAPES) if ("\\" in value or "\n" in value or '"' in value) else value


def render(families: Iterable[Metric]) -> bytes:
    """Families in the Prometheus text format (0.0.4), as prometheus_client writes them, without its per-sample
    overhead."""
    out: list[str] = []
    for family in families:
        name = family.name + "_total" if family.type == "counter" else family.name
        doc = family.documentation.replace("\\", "\\\\").replace("\n", "\\n")
        out.append(f"# HELP {name} {doc}\n# TYPE {name} {family.type}\n")
        for sample in family.samples:
            value = number(sample.value)
            if sample.labels:
                labels = ",".join(f'{key}="{_label_value(val)}"' for key, val in sorted(sample.labels.items()))
                out.append(f"{sample.name}{{{labels}}} {value}\n")
            else:
                out.append(f"{sample.name} {value}\n")
    return "".join(out).encode()


def blocks(text: str) -> dict[str, str]:
    """The families of a text page by the name in their ``# HELP`` line, each with its lines (no sample parsed)."""
    out: dict[str, str] = {}
    for chunk in text.split("# HELP ")[1:]:
        name = chunk.split(" ", 1)[0]
        out[name] = "# HELP " + chunk
    return out
