"""The local broker: start/stop are idempotent, topics get the right settings."""

from __future__ import annotations

import socket

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, ConfigResource

from spendstream.config import load_settings
from spendstream.localkafka import LocalKafka, LocalKafkaError
from spendstream.topics import TopicsError, ensure_topics, wait_for_broker, worker_topics
from tests.integration.conftest import free_port

pytestmark = pytest.mark.integration


def test_start_is_idempotent_topics_are_compacted_and_stop_is_clean(tmp_path):
    settings = load_settings(data_dir=tmp_path, kafka_local_port=free_port(),
                             kafka_local_controller_port=free_port(), topic_prefix="lk.")  # fmt: skip
    broker = LocalKafka(settings)
    assert "running" in broker.start()
    pid = broker.status()["pid"]
    try:
        assert broker.status()["running"] and broker.status()["jars_ready"]
        assert "already running" in broker.start()
        assert broker.status()["pid"] == pid

        created = ensure_topics(settings)
        # The workers' internal topics come with the others (see topics.worker_topics).
        assert set(created) == set(settings.topics.all_topics()) | set(worker_topics(settings))
        assert ensure_topics(settings) == []  # second call: nothing to do
        admin = AdminClient({"bootstrap.servers": settings.bootstrap_servers})
        resources = [ConfigResource(ConfigResource.Type.TOPIC, t)
                     for t in (settings.topics.budgets, settings.topics.status, settings.topics.llm)]  # fmt: skip
        configs = {r.name: f.result()["cleanup.policy"].value
                   for r, f in admin.describe_configs(resources).items()}  # fmt: skip
        assert configs == {"lk.budgets": "compact", "lk.budget-status": "compact",
                           "lk.usage.llm": "delete"}  # fmt: skip
        meta = admin.list_topics(timeout=10)
        assert len(meta.topics["lk.usage.llm"].partitions) == settings.topic_partitions

        producer = Producer({"bootstrap.servers": settings.bootstrap_servers})
        producer.produce("lk.usage.custom", key=b"k", value=b"v")
        assert producer.flush(10) == 0
        consumer = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": "lk",
                             "auto.offset.reset": "earliest"})  # fmt: skip
        consumer.subscribe(["lk.usage.custom"])
        msg = None
        for _ in range(40):
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                break
        consumer.close()
        assert msg is not None and msg.value() == b"v"
    finally:
        assert "stopped" in broker.stop()
    assert broker.status()["running"] is False
    assert "not running" in broker.stop()
    # Restart reuses the formatted storage and keeps the data.
    broker.start()
    try:
        admin = AdminClient({"bootstrap.servers": settings.bootstrap_servers})
        assert "lk.budgets" in admin.list_topics(timeout=10).topics
    finally:
        broker.stop()


def test_taken_port_is_reported_with_the_variable_to_change(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        settings = load_settings(data_dir=tmp_path, kafka_local_port=port,
                                 kafka_local_controller_port=free_port())  # fmt: skip
        with pytest.raises(LocalKafkaError) as info:
            LocalKafka(settings).start()
    assert str(port) in str(info.value)
    assert "SPENDSTREAM_KAFKA_LOCAL_PORT" in str(info.value)


def test_unreachable_broker_message_says_what_to_do():
    with pytest.raises(TopicsError) as info:
        wait_for_broker(f"127.0.0.1:{free_port()}", timeout=2)
    assert "spendstream kafka start" in str(info.value)
    assert "SPENDSTREAM_KAFKA_BOOTSTRAP_SERVERS" in str(info.value)
