"""Topic creation with the right settings (compaction where the latest value is the truth)."""

from __future__ import annotations

import time

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from spendstream.config import Settings


class TopicsError(RuntimeError):
    pass


def wait_for_broker(bootstrap: str, timeout: float = 60) -> None:
    """Block until the cluster answers metadata requests, or fail with what to do."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            admin.list_topics(timeout=min(5.0, max(deadline - time.monotonic(), 0.5)))
            return
        except KafkaException as exc:
            last = exc
            time.sleep(0.5)
    raise TopicsError(
        f"Kafka at {bootstrap} did not answer within {timeout:.0f}s ({last}). Is the broker "
        "running? Start the local one with `spendstream kafka start`, or set "
        "SPENDSTREAM_KAFKA_BOOTSTRAP_SERVERS to your cluster."
    )


def ensure_topics(settings: Settings, timeout: float = 30) -> list[str]:
    """Create every missing topic; returns the names created. Existing topics are kept."""
    admin = AdminClient({"bootstrap.servers": settings.bootstrap_servers})
    wanted = settings.topics.all_topics()
    existing = set(admin.list_topics(timeout=timeout).topics)
    new = [
        NewTopic(name, settings.topic_partitions, settings.topic_replication, config=config)
        for name, config in wanted.items()
        if name not in existing
    ]
    if not new:
        return []
    created = []
    for name, future in admin.create_topics(new, operation_timeout=timeout).items():
        try:
            future.result(timeout)
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise TopicsError(f"cannot create topic {name}: {exc.args[0].str()}") from None
    # Wait until the new topics' metadata is visible so producers do not race them.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        topics = admin.list_topics(timeout=timeout).topics
        if all(n in topics and not topics[n].error for n in created):
            break
        time.sleep(0.2)
    return sorted(created)
