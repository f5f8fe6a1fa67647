"""Where results go, one agent a module, each a class on the skeleton of streams/agents/base.py (the ClickHouse sink
a librdkafka loop of its own):

- ``kpi_view`` (KpiView): the rolling-window KPI gauges for Prometheus, its pure parts in ``prometheus``;
- ``effort_detector`` (EffortDetector): the effort-spike alert (CUSUM, streams/core/effort.py) and its root cause;
- ``clickhouse_sink`` (ClickHouseSink): pane results, counted answers and journey instances into ClickHouse in
  batches, and the store's read-only query endpoint; the schema, rows and connection in ``clickhouse``; how a
  process outside it reaches the store in ``store_access``;
- ``followup_webhook`` (FollowupWebhook): detractor follow-ups to a CRM webhook;

No module here imports streams/worker/; streams/processes/ composes the processes from these agents and the
worker's.
"""
