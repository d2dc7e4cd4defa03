"""Integration fixtures: one real Kafka broker per test session, chDB per test.

The broker is the same local KRaft broker users get (``spendstream kafka start``), on free
ports in a temporary directory; the Kafka jars are cached across sessions. Each test gets
its own topic prefix, consumer groups and chDB directory, so tests never see each other.
Set SPENDSTREAM_TEST_BOOTSTRAP to run against an already running broker instead.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from spendstream.config import Settings, load_settings
from spendstream.processes import ProcessGroup


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    existing = os.environ.get("SPENDSTREAM_TEST_BOOTSTRAP")
    if existing:
        yield existing
        return
    from spendstream.localkafka import LocalKafka

    data_dir = tmp_path_factory.mktemp("kafka-home")
    settings = load_settings(
        data_dir=data_dir,
        kafka_local_port=free_port(),
        kafka_local_controller_port=free_port(),
    )
    broker = LocalKafka(settings)
    broker.start()
    try:
        yield settings.bootstrap_servers
    finally:
        broker.stop()


@pytest.fixture
def settings(kafka_bootstrap: str, tmp_path: Path) -> Settings:
    run = uuid.uuid4().hex[:8]
    return load_settings(
        data_dir=tmp_path / "data",
        kafka_bootstrap_servers=kafka_bootstrap,
        topic_prefix=f"t{run}.",
        app_id=f"app-{run}",
        sink_group=f"sink-{run}",
        worker_web_port=free_port(),
        sink_query_port=0,
        sink_metrics_port=free_port(),
        notify_metrics_port=free_port(),
        topic_partitions=4,
        batch_linger_ms=20,
        sink_linger_ms=200,
    )


@pytest.fixture
def services(settings: Settings) -> Iterator[ProcessGroup]:
    group = ProcessGroup(settings)
    try:
        yield group
    finally:
        group.stop()
