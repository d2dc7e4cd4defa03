"""Where the Kafka cluster is and how this deployment's names are spelled.

Every component config (``streams/configs.py``, ``sinks/notify/service_config.py``)
holds a ``KafkaConfig``; the topic, group and producer helpers (topics.py, producer.py,
readback.py) take anything shaped like it (``KafkaTarget``), so the CLI passes its
``Settings`` and a component passes its ``KafkaConfig``, and neither reads the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from spendstream.config import Topics

if TYPE_CHECKING:
    from spendstream.config import Settings

#: librdkafka's ``topic.metadata.refresh.interval.ms`` for our long-lived clients (the SDK's
#: producer, the price stage's and the sink's consumers): 10 s, not 5 minutes. After a
#: broker restart a client can take a partition's leader as -1 from metadata asked while
#: the broker came up; the SDK's producer then sent nothing for 90 s, once in six runs
#: of the broker-restart fault scenario.
METADATA_REFRESH = {"topic.metadata.refresh.interval.ms": 10_000}


class KafkaTarget(Protocol):
    """What the Kafka helpers read: ``Settings`` and ``KafkaConfig`` both have it."""

    @property
    def bootstrap_servers(self) -> str: ...

    @property
    def topic_prefix(self) -> str: ...

    @property
    def app_id(self) -> str: ...

    @property
    def topics(self) -> Topics: ...


@dataclass(frozen=True, slots=True)
class KafkaConfig:
    """The cluster's address, the topic prefix and the workers' app id (group names)."""

    bootstrap_servers: str
    topic_prefix: str = ""
    app_id: str = "spendstream"

    @classmethod
    def from_settings(cls, settings: Settings) -> KafkaConfig:
        return cls(
            bootstrap_servers=settings.bootstrap_servers,
            topic_prefix=settings.topic_prefix,
            app_id=settings.app_id,
        )

    @property
    def topics(self) -> Topics:
        return Topics(self.topic_prefix)
