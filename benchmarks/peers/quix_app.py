"""Quix Streams, as its documentation aggregates: ``group_by`` the segment, ``tumbling_window(60 s)``,
``reduce`` to a count, ``current()`` to an output topic.  Defaults otherwise; ``grace_ms`` covers the events'
time spread so that Quix counts every event (the others count late events too).

Runs in its own virtualenv (.venv-quix: quixstreams pins an older confluent-kafka), so it imports nothing
from cxpulse: the Avro schema is read from schemas/feedback_event.avsc.  Usage (from benchmarks/bench.py)::

    .venv-quix/bin/python benchmarks/peers/quix_app.py --bootstrap H:P --topic T --out O --group G --state DIR
"""

from __future__ import annotations

import argparse
import copy
import io
import json
from pathlib import Path
from typing import Any

import fastavro
from quixstreams import Application
from quixstreams.models.serializers import Deserializer

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "schemas" / "feedback_event.avsc"


def _strip(schema: Any) -> Any:
    if isinstance(schema, dict):
        out = {k: _strip(v) for k, v in schema.items()}
        if out.get("logicalType") == "timestamp-millis":
            out.pop("logicalType")
        return out
    if isinstance(schema, list):
        return [_strip(s) for s in schema]
    return schema


FEEDBACK = fastavro.parse_schema(_strip(copy.deepcopy(json.loads(SCHEMA_FILE.read_text()))))


class FeedbackAvro(Deserializer):
    """Confluent-framed FeedbackEvent: 5 header bytes, then the Avro body (same decoding as the others)."""

    def __call__(self, value: bytes, ctx: Any) -> Any:
        return fastavro.schemaless_reader(io.BytesIO(value[5:]), FEEDBACK, None)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--state", required=True)
    parser.add_argument("--grace-ms", type=int, required=True)
    args = parser.parse_args()
    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        state_dir=args.state,
    )
    source = app.topic(args.topic, key_deserializer="bytes", value_deserializer=FeedbackAvro())
    out = app.topic(args.out, key_serializer="string", value_serializer="json")
    sdf = app.dataframe(source)
    sdf = sdf.group_by(lambda v: f"{v['channel']}|{v['journey']}|{v['metric']}", name="segment")
    sdf = sdf.tumbling_window(duration_ms=60_000, grace_ms=args.grace_ms).reduce(
        reducer=lambda total, _: total + 1, initializer=lambda _: 1
    )
    sdf = sdf.current()
    sdf.to_topic(out)
    app.run()


if __name__ == "__main__":
    main()
