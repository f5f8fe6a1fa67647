"""Sinks of the pipeline: the ClickHouse writer and the Prometheus exporter (ROADMAP items 1 and 2)."""
