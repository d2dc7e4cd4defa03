"""The spend table's writes: the faust table keeps the states in memory and recovers them
from its changelog; the checkpoint writes the changelog through the output producer.

A checkpoint writes up to one state per busy (budget, period), ~1,000 a second with
1,000 budgets. Through ``Table.__setitem__`` each write went through faust's Python
producer path (FutureMessage, aiokafka's accumulator, sensors): ~0.3 ms a state
profiled, a third of the aggregator's time below capacity, and the batches waiting
behind it on the event loop. Written here, a state costs its serialization (faust's own,
so recovery reads it back unchanged) and one librdkafka ``produce``.

What faust still does: create the changelog topic's partitions with the table, read the
changelog back into the memory store when a partition is assigned (recovery), and drop
the keys of partitions it lost. The guarantee is the checkpoint's (checkpoint.py): the
states are acknowledged by the broker (its drain) before the offsets of the batches they
count may commit.
"""

from __future__ import annotations

from typing import Any, Protocol


class Send(Protocol):
    def __call__(
        self, topic: str, key: bytes | None, value: bytes | None, *, partition: int
    ) -> None: ...


class SpendTable:
    """Reads and writes of the faust table of spend per "budget|period" (its values are
    ``PeriodState.dumps`` strings), changelog records sent by ``send``."""

    def __init__(self, table: Any, send: Send) -> None:
        self.table = table
        self.send = send
        self.topic: str = table.changelog_topic.get_topic_name()
        self._changelog = table.changelog_topic

    def get(self, key: str) -> str | None:
        return self.table.get(key)  # type: ignore[no-any-return]

    def put(self, key: str, value: str, partition: int) -> None:
        """Hold ``value`` in the store and send it to the changelog partition of the
        input partition it was counted from (faust's co-partitioning: the state comes back
        with that partition on recovery)."""
        store = self.table.data
        store[key] = value
        key_partition = getattr(store, "_key_partition", None)
        if key_partition is not None:  # the memory store drops keys of lost partitions by it
            key_partition[key] = partition
        self.send(self.topic, *self.encode(key, value), partition=partition)

    def encode(self, key: str, value: str) -> tuple[bytes, bytes]:
        """The changelog record's key and value as faust serializes them for this table
        (its recovery decodes them with the same serializers)."""
        raw_key, _ = self._changelog.prepare_key(key, self.table.key_serializer)
        raw_value, _ = self._changelog.prepare_value(value, self.table.value_serializer)
        return raw_key, raw_value
