"""A minimal Faust app for the compatibility test, built the way cxpulse builds its processes: streams.agents'
app builder (read_committed: streams/agents/faust_compat.py), a KeyPartitionedTable whose changelog goes through a
ResultsProducer flushed after every message.  Consumes TOPIC, counts in the table, prints ``COUNT n VALUE``; every
0.2 s, whether it is settled and its fetch wait (``PACED True 500``: streams.agents.faust_compat.settle).

Run as ``python tests/integration/faust_smoke_app.py worker`` with CXPULSE_SMOKE_BROKER, CXPULSE_SMOKE_TOPIC,
CXPULSE_SMOKE_APP and CXPULSE_SMOKE_DATADIR set.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, cast

import faust

from streams.agents import faust_compat
from streams.agents.faust_app import TABLE_SCHEMA, faust_app
from streams.agents.results import ResultsProducer
from streams.config import Settings

settings = Settings(
    kafka_bootstrap=os.environ["CXPULSE_SMOKE_BROKER"],
    data_dir=Path(os.environ.get("CXPULSE_SMOKE_DATADIR", ".")),
    partitions=2,
    clickhouse_url="",
)
app = faust_app(settings, os.environ["CXPULSE_SMOKE_APP"], "smoke", Table=faust_compat.KeyPartitionedTable)
source = app.topic(os.environ["CXPULSE_SMOKE_TOPIC"], value_serializer="raw", partitions=2)
results = ResultsProducer(settings.kafka)
counts = cast(Any, app.Table("smoke-counts", default=int, partitions=2, schema=TABLE_SCHEMA))
counts.write_changelog_with(results)


@app.agent(source)
async def count(stream: faust.StreamT[bytes]) -> None:
    async for value in stream:
        counts["0|all"] += 1
        await results.flush()
        print(f"COUNT {counts['0|all']} {value.decode()}", flush=True)


@app.timer(interval=0.2)
async def pace() -> None:
    settled = faust_compat.settle(app)
    print(f"PACED {settled} {faust_compat.fetch_wait(app)}", flush=True)


if __name__ == "__main__":
    app.main()
