"""Watermark lookups ride out a partition whose leader is not known yet (a just-created
topic, a restarted broker): the lag and readback functions all go through them."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from spendstream.topics import watermarks


class Flaky:
    def __init__(self, failures: int, code: int) -> None:
        self.failures, self.code, self.calls = failures, code, 0

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float) -> tuple[int, int]:
        self.calls += 1
        if self.calls <= self.failures:
            raise KafkaException(KafkaError(self.code))
        return 3, 42


def test_not_leader_for_partition_is_retried():
    consumer = Flaky(2, KafkaError.NOT_LEADER_FOR_PARTITION)
    assert watermarks(consumer, TopicPartition("t", 0), timeout=5) == (3, 42)  # type: ignore[arg-type]
    assert consumer.calls == 3


def test_a_lasting_or_final_error_is_raised():
    with pytest.raises(KafkaException):
        watermarks(Flaky(10**6, KafkaError.NOT_LEADER_FOR_PARTITION),  # type: ignore[arg-type]
                   TopicPartition("t", 0), timeout=0.5)  # fmt: skip
    final = Flaky(1, KafkaError.TOPIC_AUTHORIZATION_FAILED)
    with pytest.raises(KafkaException):
        watermarks(final, TopicPartition("t", 0), timeout=5)  # type: ignore[arg-type]
    assert final.calls == 1
