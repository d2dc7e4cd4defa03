"""Shared by the benchmarks: a throwaway local broker (or the one you name) and settings."""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from confluent_kafka import Producer

from spendstream.config import Settings, load_settings
from spendstream.localkafka import LocalKafka
from spendstream.producer import produce_waiting


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def bench_settings(**overrides: object) -> Iterator[Settings]:
    """Settings on a fresh local broker (stopped afterwards), unless
    SPENDSTREAM_KAFKA_BOOTSTRAP_SERVERS names one; unique topics and chDB directory."""
    with tempfile.TemporaryDirectory(prefix="spendstream-bench-") as tmp:
        run = uuid.uuid4().hex[:8]
        base = dict(data_dir=Path(tmp), topic_prefix=f"bench{run}.", app_id=f"bench-{run}",
                    sink_group=f"bench-sink-{run}", worker_web_port=free_port(),
                    sink_query_port=0)  # fmt: skip
        base.update(overrides)
        external = os.environ.get("SPENDSTREAM_KAFKA_BOOTSTRAP_SERVERS")
        if external:
            yield load_settings(**base)
            return
        settings = load_settings(kafka_local_port=free_port(),
                                 kafka_local_controller_port=free_port(), **base)  # fmt: skip
        broker = LocalKafka(settings)
        broker.start()
        try:
            yield settings
        finally:
            broker.stop()


def produce(producer: Producer, topic: str, key: bytes, value: bytes) -> None:
    """Produce, waiting for room when the local queue is full (load generators outrun it)."""
    produce_waiting(producer, topic, key, value)
