"""The worker's consumer never acks a record its stream skipped during a rebalance."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from faust.types import TP
from faust.types.tuples import ConsumerMessage

from spendstream.config import load_settings
from spendstream.streams.ack_guard import guard_acks
from spendstream.streams.app import create_app


def message(topic: str, offset: int, *, tracked: bool) -> ConsumerMessage:
    msg = ConsumerMessage(topic, 0, offset, 0.0, 0, None, b"k", b"v", None, tp=TP(topic, 0))
    msg.tracked = tracked
    return msg


class RecordingConsumer:
    def __init__(self) -> None:
        self.acked: list[int] = []

    def ack(self, message: ConsumerMessage) -> bool:
        self.acked.append(message.offset)
        return True


def test_guard_passes_delivered_records_and_refuses_skipped_ones() -> None:
    consumer, metrics = RecordingConsumer(), Counter[str]()
    guard_acks(consumer, metrics)
    assert consumer.ack(message("t", 1, tracked=True)) is True
    assert consumer.ack(message("t", 2, tracked=False)) is False
    assert consumer.acked == [1]
    assert metrics["skipped_acks_refused"] == 1


def test_worker_consumer_never_makes_a_skipped_offset_committable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load_settings(data_dir=tmp_path, topic_prefix="ackguard.")
    app = create_app(settings)
    # acks count for subscribed source topics; there is no subscription without a broker
    monkeypatch.setattr(app.topics, "acks_enabled_for", lambda topic: True)
    source = settings.topics.sources[0]
    consumer = app.consumer
    tp = TP(source, 0)
    # a record the stream skipped (never tracked), then its refetched copy, delivered
    assert consumer.ack(message(source, 0, tracked=False)) is False
    assert consumer._acked[tp] == []
    assert consumer.ack(message(source, 0, tracked=True)) is True
    assert consumer._acked[tp] == [0]
    assert app.spendstream_metrics["skipped_acks_refused"] == 1
