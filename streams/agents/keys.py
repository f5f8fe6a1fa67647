"""The keys of the Faust tables and of the results topic, typed: one NamedTuple each, one ``encode`` and one
``decode``.  The strings are the ones the changelogs have always held (``"<partition>|..."``: a table's changelog
partition is the key's first field, streams.agents.faust_compat.KeyPartitionedTable), so recovery reads old
changelogs as before.  Channel and journey are labels (``^[a-z0-9][a-z0-9_.-]*$``): they never hold a ``|``."""

from __future__ import annotations

import zlib
from typing import NamedTuple


class PaneKey(NamedTuple):
    """A pane of a segment, in the partition that owns the segment: tables ``panes`` and ``effort-panes``."""

    partition: int
    channel: str
    journey: str
    pane: int

    def encode(self) -> str:
        return f"{self.partition}|{self.channel}|{self.journey}|{self.pane}"

    @classmethod
    def decode(cls, key: str) -> PaneKey:
        partition, channel, journey, pane = key.split("|")
        return cls(int(partition), channel, journey, int(pane))


def pane_bucket(raw: bytes) -> int:
    """The pane start of a :class:`PaneKey` as its changelog carries it (JSON: ``b'"3|phone|billing|1700000040000"'``):
    the time bucket of the panes' local copies (streams.agents.local_tables); 0 for anything else."""
    try:
        return max(0, int(raw.rsplit(b"|", 1)[-1].strip(b'"')))
    except ValueError:
        return 0


class MetricPaneKey(NamedTuple):
    """A pane of a segment and metric: table ``kpi-view``."""

    partition: int
    channel: str
    journey: str
    metric: str
    pane: int

    def encode(self) -> str:
        return f"{self.partition}|{self.channel}|{self.journey}|{self.metric}|{self.pane}"

    @classmethod
    def decode(cls, key: str) -> MetricPaneKey:
        partition, channel, journey, metric, pane = key.split("|")
        return cls(int(partition), channel, journey, metric, int(pane))


class SegmentKey(NamedTuple):
    """A segment in the partition that owns it: table ``effort-state``."""

    partition: int
    channel: str
    journey: str

    def encode(self) -> str:
        return f"{self.partition}|{self.channel}|{self.journey}"

    @classmethod
    def decode(cls, key: str) -> SegmentKey:
        partition, channel, journey = key.split("|")
        return cls(int(partition), channel, journey)


class SourceKey(NamedTuple):
    """A source (feedback) partition's chain in a partials partition: table ``positions``."""

    partition: int
    source: int

    def encode(self) -> str:
        return f"{self.partition}|{self.source}"


class ResultKey(NamedTuple):
    """The key of a WindowResult on the results topic."""

    channel: str
    journey: str
    metric: str
    window_start: int

    def encode(self) -> bytes:
        return f"{self.channel}|{self.journey}|{self.metric}|{self.window_start}".encode()

    @staticmethod
    def metric_of(key: bytes) -> bytes | None:
        """The metric of an encoded key, without decoding the rest (None: not such a key)."""
        parts = key.rsplit(b"|", 2)
        return parts[1] if len(parts) == 3 else None


def table_partition(key: object) -> int:
    """The changelog partition of a table key: its first field."""
    return int(str(key).split("|", 1)[0])


def segment_partition(channel: str, journey: str, partitions: int) -> int:
    """The partition that owns a segment (partials, results): a stable hash of ``channel|journey``, the same in
    every worker."""
    return zlib.crc32(f"{channel}|{journey}".encode()) % partitions
