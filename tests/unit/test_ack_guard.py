"""The worker's consumer acks only records whose batch finished (streams/ack_guard.py)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
from faust.types import TP
from faust.types.tuples import ConsumerMessage

from spendstream.config import load_settings
from spendstream.streams.ack_guard import AckGuard
from spendstream.streams.app import create_app


def message(topic: str, offset: int) -> ConsumerMessage:
    return ConsumerMessage(topic, 0, offset, 0.0, 0, None, b"k", b"v", None, tp=TP(topic, 0))


def event(msg: ConsumerMessage) -> SimpleNamespace:
    return SimpleNamespace(message=msg)


class RecordingConsumer:
    def __init__(self) -> None:
        self.acked: list[tuple[str, int]] = []

    def ack(self, message: ConsumerMessage) -> bool:
        self.acked.append((message.topic, message.offset))
        return True


def test_only_records_of_finished_batches_are_acked() -> None:
    consumer, metrics = RecordingConsumer(), Counter[str]()
    guard = AckGuard(["usage.llm"], metrics)
    guard.install(consumer)
    finished, abandoned = message("usage.llm", 1), message("usage.llm", 2)
    guard.completed([event(finished)])
    assert consumer.ack(finished) is True
    # a batch abandoned at shutdown, or a record skipped during a rebalance
    assert consumer.ack(abandoned) is False
    assert consumer.acked == [("usage.llm", 1)]
    assert metrics["acks_refused"] == 1


def test_records_of_other_topics_pass() -> None:
    consumer = RecordingConsumer()
    AckGuard(["usage.llm"], Counter()).install(consumer)
    assert consumer.ack(message("app-__assignor-__leader", 3)) is True


def test_worker_consumer_never_makes_an_unfinished_offset_committable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load_settings(data_dir=tmp_path, topic_prefix="ackguard.")
    app = create_app(settings)
    # acks count for subscribed source topics; there is no subscription without a broker
    monkeypatch.setattr(app.topics, "acks_enabled_for", lambda topic: True)
    source = settings.topics.sources[0]
    consumer, tp = app.consumer, TP(source, 0)
    first, second = message(source, 0), message(source, 1)
    assert consumer.ack(first) is False  # its batch has not finished
    assert consumer._acked[tp] == []
    app.spendstream_ack_guard.completed([event(first), event(second)])
    assert consumer.ack(first) is True
    assert consumer.ack(second) is True
    assert consumer._acked[tp] == [0, 1]
    assert app.spendstream_metrics["acks_refused"] == 1
