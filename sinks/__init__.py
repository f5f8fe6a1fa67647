"""Where results go, one agent a module, each a class on the skeleton of streams/agents/base.py:

- ``kpi_view`` (KpiView): the rolling-window KPI gauges for Prometheus, its pure parts in ``prometheus``;
- ``effort_detector`` (EffortDetector): the effort-spike alert (CUSUM, streams/core/effort.py) and its root cause;
- ``clickhouse_sink`` (ClickHouseSink): pane results and counted answers into ClickHouse, and the store's read-only
  query endpoint; the schema, rows and connection in ``clickhouse``;
- ``followup_webhook`` (FollowupWebhook): detractor follow-ups to a CRM webhook;
- ``report``: ``cxpulse report`` and ``cxpulse drivers``, reading ClickHouse back (no Faust).

No module here imports streams/worker/; streams/processes.py composes the processes from these agents and the
worker's.
"""
