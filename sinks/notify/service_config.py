"""What `spendstream notify` is configured with, built once from ``Settings`` at the edge.

The CLI command calls ``NotifyConfig.from_settings`` and hands the result to
``NotifyService``; that classmethod is the only code of ``sinks/notify/`` that reads
``Settings`` (tests/unit/test_component_configs.py checks it). The routing rules and
channels come from the rules file instead (config.py, ``NotifyRules``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from spendstream.kafka_config import KafkaConfig
from spendstream.topics import notify_group

if TYPE_CHECKING:
    from spendstream.config import Settings


@dataclass(frozen=True, slots=True)
class NotifyConfig:
    """The notify service's consumer group, send pool and metrics port."""

    kafka: KafkaConfig
    #: Confluent Schema Registry URL; "" = Avro single-object encoding
    schema_registry_url: str = ""
    #: the consumer group of `spendstream notify` (prefixed like the topics)
    group: str = "spendstream-notify"
    #: a crashed instance's alerts move to another one (or its restart) this soon
    session_timeout_s: int = 10
    #: deliveries sent at once (threads)
    workers: int = 8
    metrics_port: int = 9466
    metrics_bind: str = "127.0.0.1"

    @classmethod
    def from_settings(cls, settings: Settings) -> NotifyConfig:
        return cls(
            kafka=KafkaConfig.from_settings(settings),
            schema_registry_url=settings.schema_registry_url,
            group=notify_group(settings),
            session_timeout_s=settings.worker_session_timeout_s,
            workers=settings.notify_workers,
            metrics_port=settings.notify_metrics_port,
            metrics_bind=settings.notify_metrics_bind,
        )
