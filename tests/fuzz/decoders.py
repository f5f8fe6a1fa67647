"""An atheris (coverage-guided, libFuzzer) harness for everything a Kafka message's bytes go through in the hot
path: decode (JSON, plain Avro, Confluent wire format), validate, de-duplicate, aggregate, and the writes of the
batch's output.  Any exception is a finding: a poison message must become a dead letter, never a failed batch.

    make fuzz                      # 60 s (FUZZ_SECONDS=...), corpus in .cxpulse/fuzz-corpus
    .venv/bin/python tests/fuzz/decoders.py -max_total_time=600 CORPUS_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from schemas.codec import FEEDBACK, FEEDBACK_RAW, LocalCatalog, encode_confluent
    from streams.agents.record import Record
    from streams.core.followups import encode as encode_followup
    from streams.core.validate import Clock
    from streams.processes.sink import answer_block
    from streams.worker.ingest import Ingest
    from streams.worker.records import (
        ANSWER_ROWS,
        ANSWERS_FORMAT_HEADER,
        encode_answer_rows,
        encode_answers,
        encode_partials,
        encode_routed,
        encode_seen,
    )

CATALOG = LocalCatalog()
NOW = 1_800_000_000_000
CLOCK = Clock(NOW, 300_000, 7 * 86_400_000)
SEPARATOR = b"\xff\x00\xff"  # splits one fuzz input into several messages of a batch


class Message:
    def __init__(self, partition: int, offset: int, value: bytes, topic: str = "cx.feedback") -> None:
        self._partition, self._offset, self._value, self._topic = partition, offset, value, topic

    def topic(self) -> str:
        return self._topic

    def timestamp(self) -> tuple[int, int]:
        return (1, NOW)

    def headers(self) -> None:
        return None

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return None

    def value(self) -> bytes:
        return self._value


def one_input(data: bytes) -> None:
    values = data.split(SEPARATOR)[:50]
    ingest = Ingest("cx.feedback", CATALOG, 60_000, 2, 2, followups=True, answers=True, customer_key=b"k" * 16)
    routed = ingest.batch([Message(i % 2, i, value) for i, value in enumerate(values)], CLOCK)
    out = ingest.batch([Message(q, 0, encode_routed(v), "cx-routed") for q, v in routed.routed.items()], CLOCK)
    assert out.counted + len(routed.dead_letters) + out.duplicates == len(values) and not out.dead_letters
    for letter in routed.dead_letters:
        for _, header in letter.headers:
            if isinstance(header, str):
                header.encode()
    for followup in out.followups:
        encode_followup(followup)
    for batch in out.partials.values():
        encode_partials(batch)
    for buckets in out.seen.values():
        encode_seen(buckets)
    for answers in out.answers.values():
        encode_answers(answers)
    for rows in out.answer_rows.values():  # what the sink stores of them, whatever the input was
        message = Record(0, 0, encode_answer_rows(rows), 0, [(ANSWERS_FORMAT_HEADER, ANSWER_ROWS)])
        assert len(answer_block(message, CATALOG)[0]) == len(rows)


def seed_corpus(folder: Path) -> None:
    """A few real messages to start from: JSON and Confluent Avro FeedbackEvents, valid and not."""
    folder.mkdir(parents=True, exist_ok=True)
    event = {
        "event_id": "e-1", "occurred_at": NOW - 60_000, "source": "web", "channel": "chat", "journey": "billing",
        "touchpoint": "bot", "metric": "NPS", "score": 3, "scale_min": None, "scale_max": None,
        "customer_id": "c-1", "interaction_id": "i-1", "agent_id": None, "team": None,
        "reason_codes": ["slow"], "comment": "too slow",
    }  # fmt: skip
    avro = encode_confluent(event, FEEDBACK, CATALOG.id_for(FEEDBACK_RAW))
    seeds = {
        "json": json.dumps(event).encode(),
        "avro": avro,
        "both": json.dumps(event).encode() + SEPARATOR + avro + SEPARATOR + avro[:20],
        "bad": json.dumps({**event, "metric": "XYZ", "score": 99}).encode(),
    }
    for name, value in seeds.items():
        (folder / name).write_bytes(value)


if __name__ == "__main__":
    corpus = [arg for arg in sys.argv[1:] if not arg.startswith("-")]
    for folder in corpus:
        seed_corpus(Path(folder))
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
