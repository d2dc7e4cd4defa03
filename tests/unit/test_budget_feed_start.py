"""The budget feed asks for every partition's end before it assigns them: once assigned,
the consumer's long-polling fetches hold the broker connection and each watermark request
waited ``fetch.wait.max.ms`` behind one (an aggregator over 24 partitions started 12 s
late). A stand-in consumer records the order of the calls."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from spendstream.config import Settings
from spendstream.streams import budget_feed
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
