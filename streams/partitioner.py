"""Kafka's default key partitioner (murmur2), so a stage can place records itself.

The price stage groups a batch's allocations by the partition their budget_id lands on
and sends one batch record per partition; the partition must be the one librdkafka's
``murmur2_random`` (and the Java client) gives the key, so a budget's spend stays on the
partition it has always been on, across upgrades and whoever produced it.
"""

from __future__ import annotations

_M = 0x5BD1E995
_SEED = 0x9747B28C
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """32-bit MurmurHash2 as Kafka computes it (signed result, like Java's int)."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    end = length - length % 4
    for i in range(0, end, 4):
        k = data[i] | data[i + 1] << 8 | data[i + 2] << 16 | data[i + 3] << 24
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    tail = length % 4
    if tail == 3:
        h ^= data[end + 2] << 16
    if tail >= 2:
        h ^= data[end + 1] << 8
    if tail >= 1:
        h ^= data[end]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner picks for a non-null ``key``."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class KeyPartitioner:
    """``partition_for`` with a cache: a stage sees the same few thousand keys again and
    again (budget ids), and a dict hit is ~20x cheaper than hashing in Python."""

    def __init__(self, partitions: int, limit: int = 100_000) -> None:
        self.partitions = partitions
        self.limit = limit
        self._cache: dict[str, int] = {}

    def __call__(self, key: str) -> int:
        found = self._cache.get(key)
        if found is None:
            if len(self._cache) >= self.limit:
                self._cache.clear()
            found = self._cache[key] = partition_for(key.encode(), self.partitions)
        return found
