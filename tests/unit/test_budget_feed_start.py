"""The budget feed asks for every partition's end before it assigns them: once assigned,
the consumer's long-polling fetches hold the broker connection and each watermark request
waited ``fetch.wait.max.ms`` behind one (an aggregator over 24 partitions started 12 s
late). A stand-in consumer records the order of the calls."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from spendstream.config import Settings
from spendstream.schemas.budget import BudgetDefinition
from spendstream.streams import budget_feed, matching
from spendstream.streams.budget_feed import BudgetFeed


class RecordingConsumer:
    """Topics of six partitions; the budgets topic holds records on partition 2 only."""

    def __init__(self, topics: list[str], budgets: str, feed: list[BudgetFeed]) -> None:
        self.topics, self.budgets, self.feed = topics, budgets, feed
        self.calls: list[tuple[str, Any]] = []

    def list_topics(self, timeout: float) -> Any:
        parts = dict.fromkeys(range(6))
        return SimpleNamespace(
            topics={t: SimpleNamespace(partitions=parts, error=None) for t in self.topics}
        )

    def get_watermark_offsets(self, tp: Any, timeout: float) -> tuple[int, int]:
        self.calls.append(("watermarks", (tp.topic, tp.partition)))
        return (0, 3) if (tp.topic, tp.partition) == (self.budgets, 2) else (0, 0)

    def assign(self, assignment: list[Any]) -> None:
        self.calls.append(("assign", len(assignment)))

    def consume(self, n: int, timeout: float) -> list[Any]:
        self.calls.append(("consume", None))
        self.feed[0].stop()  # one round is enough to see the order
        return []

    def close(self) -> None:
        self.calls.append(("close", None))


@pytest.mark.parametrize("follow_status", [False, True])
def test_every_watermark_is_read_before_the_assignment(monkeypatch, follow_status):
    settings = Settings()
    t = settings.topics
    topics = [t.budgets, t.status, t.alert_actions, t.fx_rates]
    holder: list[BudgetFeed] = []
    consumer = RecordingConsumer(topics, t.budgets, holder)
    monkeypatch.setattr(budget_feed, "Consumer", lambda config: consumer)
    feed = BudgetFeed(settings, follow_status=follow_status, fetch_wait_ms=500)
    holder.append(feed)

    feed.run()  # in this thread: returns once the stand-in stopped it

    kinds = [kind for kind, _ in consumer.calls]
    wanted = 4 * 6 if follow_status else 6
    assert kinds == ["watermarks"] * wanted + ["assign", "consume", "close"]
    assert consumer.calls[wanted] == ("assign", wanted)
    # budgets partition 2 holds records: not ready until it reports its end
    assert not feed.ready.is_set() and not feed.caught_up.is_set()


class Msg:
    def __init__(self, topic: str, key: bytes | None, value: bytes | None, eof: bool = False):
        self._t, self._k, self._v, self._eof = topic, key, value, eof

    def error(self) -> Any:
        if not self._eof:
            return None
        return SimpleNamespace(code=lambda: budget_feed.KafkaError._PARTITION_EOF)

    def topic(self) -> str:
        return self._t

    def partition(self) -> int:
        return 2

    def key(self) -> bytes | None:
        return self._k

    def value(self) -> bytes | None:
        return self._v


def test_a_batch_of_definitions_is_one_registry_change_before_ready(monkeypatch):
    """1,000 definitions read in two batches: two index builds (one per batch), all of
    them in the registry by the time it reports ready, a tombstone and a later record of
    an id applied in record order."""
    settings = Settings()
    budgets = settings.topics.budgets
    holder: list[BudgetFeed] = []
    consumer = RecordingConsumer([budgets], budgets, holder)
    defs = [BudgetDefinition(budget_id=f"b{i}", name=f"b{i}", limit="1") for i in range(1000)]
    first = [Msg(budgets, d.budget_id.encode(), d.encode()) for d in defs[:500]]
    second = [Msg(budgets, d.budget_id.encode(), d.encode()) for d in defs[500:]]
    again = BudgetDefinition(budget_id="b3", name="b3", limit="7")
    second += [Msg(budgets, b"b1", None), Msg(budgets, b"b3", again.encode()),
               Msg(budgets, None, None, eof=True)]  # fmt: skip
    seen_at_ready: list[int] = []
    rounds = iter([first, second])

    def consume(n: int, timeout: float) -> list[Any]:
        batch = next(rounds, None)
        if batch is None:
            holder[0].stop()
            return []
        return batch

    consumer.consume = consume  # type: ignore[method-assign]
    monkeypatch.setattr(budget_feed, "Consumer", lambda config: consumer)
    built: list[int] = []
    real = matching.Snapshot.__init__

    def counting(self: Any, found: dict[str, BudgetDefinition]) -> None:
        built.append(len(found))
        real(self, found)

    monkeypatch.setattr(matching.Snapshot, "__init__", counting)
    feed = BudgetFeed(settings, fetch_wait_ms=500)
    holder.append(feed)
    real_check = feed._check_ready

    def check(pending: set[tuple[str, int]]) -> None:
        real_check(pending)
        if feed.ready.is_set() and not seen_at_ready:
            seen_at_ready.append(len(feed.registry))

    feed._check_ready = check  # type: ignore[method-assign]
    built.clear()  # the feed's empty registry
    feed.run()

    assert built == [500, 999]
    assert seen_at_ready == [999]
    assert feed.registry.get("b1") is None
    assert feed.registry.get("b3").limit == again.limit  # type: ignore[union-attr]
