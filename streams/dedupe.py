"""Which event ids the price stage has already priced: per input partition, for a window.

Producers key events by event_id, so every copy of an event lands on one partition of
its topic, and that partition's owner alone decides. The state is in memory, built from
a changelog (the ``SeenEvents`` records the price stage writes with each batch's outputs,
before the batch's input offsets commit) when a partition is assigned.

Nothing here can hide an event whose outputs were never written (the "marked before the
write" bug): an id counts as seen only at the position where it was first seen, and when
a partition is (re)assigned only changelog entries below the committed offset are
loaded — entries at or above it belong to batches whose offsets never committed, which
the stage processes again. A record at the very position an id was first seen at is a
replay of it, never a duplicate.

Memory: about 100 bytes per id kept; ids leave after ``window_s`` (counted on the Kafka
timestamps of the input, so a replay decides alike), in buckets of a tenth of the window.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

TopicPartition = tuple[str, int]


@dataclass
class PartitionSeen:
    """Ids first seen on one input partition: id -> offset of the first sighting."""

    bucket_ms: int
    ids: dict[str, int] = field(default_factory=dict)
    #: (bucket number, ids first seen in it), oldest first
    buckets: deque[tuple[int, list[str]]] = field(default_factory=deque)

    def add(self, event_id: str, offset: int, ts_ms: int) -> None:
        self.ids[event_id] = offset
        bucket = ts_ms // self.bucket_ms
        if not self.buckets or self.buckets[-1][0] < bucket:
            self.buckets.append((bucket, [event_id]))
        else:
            self.buckets[-1][1].append(event_id)

    def expire(self, oldest_bucket: int) -> int:
        dropped = 0
        while self.buckets and self.buckets[0][0] < oldest_bucket:
            _, ids = self.buckets.popleft()
            for event_id in ids:
                if self.ids.pop(event_id, None) is not None:
                    dropped += 1
        return dropped


class DedupeState:
    """The seen ids of every input partition this process owns."""

    def __init__(self, window_s: float) -> None:
        self.window_ms = max(int(window_s * 1000), 1)
        self.bucket_ms = max(self.window_ms // 10, 1)
        self.partitions: dict[TopicPartition, PartitionSeen] = {}

    # --- ownership ---------------------------------------------------------------------
    def assign(
        self,
        tp: TopicPartition,
        committed: int,
        changelog: Iterable[tuple[int, list[str], list[int]]],
    ) -> int:
        """Own ``tp`` from its ``committed`` offset: load the changelog entries (seen_at ms,
        ids, offsets) of ids first seen below it, within the window of the newest entry
        (input time, as expiry counts it). Returns the number of ids loaded."""
        seen = PartitionSeen(self.bucket_ms)
        entries = sorted(changelog, key=lambda entry: entry[0])
        oldest = entries[-1][0] - self.window_ms if entries else 0
        for seen_at, ids, offsets in entries:
            if seen_at < oldest:
                continue
            for event_id, offset in zip(ids, offsets, strict=True):
                if offset < committed and event_id not in seen.ids:
                    seen.add(event_id, offset, seen_at)
        self.partitions[tp] = seen
        return len(seen.ids)

    def revoke(self, tp: TopicPartition) -> None:
        self.partitions.pop(tp, None)

    def owns(self, tp: TopicPartition) -> bool:
        return tp in self.partitions

    # --- deciding ----------------------------------------------------------------------
    def first_seen(self, tp: TopicPartition, event_id: str) -> int | None:
        """Offset where ``event_id`` was first seen on ``tp`` (None: never, or expired)."""
        return self.partitions[tp].ids.get(event_id)

    def mark(self, tp: TopicPartition, event_id: str, offset: int, ts_ms: int) -> None:
        self.partitions[tp].add(event_id, offset, ts_ms)

    def expire(self, newest_ms: int) -> int:
        """Drop ids first seen before ``newest_ms`` minus the window (whole buckets)."""
        oldest_bucket = (newest_ms - self.window_ms) // self.bucket_ms
        return sum(p.expire(oldest_bucket) for p in self.partitions.values())

    def __len__(self) -> int:
        return sum(len(p.ids) for p in self.partitions.values())
