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
