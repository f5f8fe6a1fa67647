"""A minimal Faust app for the compatibility test: consumes TOPIC, counts in a changelog-backed table.

Run as `python tests/integration/faust_smoke_app.py worker` with CXPULSE_SMOKE_BROKER, CXPULSE_SMOKE_TOPIC
and CXPULSE_SMOKE_APP set; prints `COUNT n` after every message.
"""

from __future__ import annotations

import os

import faust

app = faust.App(
    os.environ["CXPULSE_SMOKE_APP"],
    broker=f"kafka://{os.environ['CXPULSE_SMOKE_BROKER']}",
    store="memory://",
    web_enabled=False,
    topic_partitions=2,
    topic_replication_factor=1,
    datadir=os.environ.get("CXPULSE_SMOKE_DATADIR", "."),
)
source = app.topic(os.environ["CXPULSE_SMOKE_TOPIC"], value_serializer="raw", partitions=2)
counts = app.Table("smoke-counts", default=int, partitions=2)


@app.agent(source)
async def count(stream: faust.StreamT[bytes]) -> None:
    async for value in stream:
        counts["all"] += 1
        print(f"COUNT {counts['all']} {value.decode()}", flush=True)


if __name__ == "__main__":
    app.main()
