"""The sink's own settings: built once from ``Settings`` at the edge (the ``spendstream sink``
command, ``sinks/service.py``), then passed in; the sink classes never read ``Settings``."""

from __future__ import annotations

from dataclasses import dataclass

from spendstream.config import Settings, Topics


@dataclass(frozen=True)
class SinkConfig:
    bootstrap_servers: str
    #: the consumer group, prefix applied
    group: str
    topic_prefix: str
    #: topics the sink consumes; each needs a registered table (sinks/tables.py)
    topics: tuple[str, ...]
    #: records the sink cannot store go here, with the reason
    dlq_topic: str
    #: a partition's buffer is written once it holds this many records ...
    batch_rows: int = 20_000
    #: ... or its first record waited this long
    linger_ms: int = 500
    #: let ClickHouse decode the tables that have a native path (sinks/native_ingest.py)
    native: bool = True
    retry_initial_s: float = 0.5
    retry_max_s: float = 30.0
    #: a crashed sink's partitions wait this long for the next one (librdkafka's 45 s
    #: default left a restarted sink idle that long)
    session_timeout_s: int = 10

    @property
    def names(self) -> Topics:
        return Topics(self.topic_prefix)

    @classmethod
    def from_settings(
        cls, settings: Settings, *, retry_initial_s: float = 0.5, retry_max_s: float = 30.0
    ) -> SinkConfig:
        from .tables import sink_inputs

        return cls(
            bootstrap_servers=settings.bootstrap_servers,
            group=f"{settings.topic_prefix}{settings.sink_group}",
            topic_prefix=settings.topic_prefix,
            topics=tuple(sink_inputs(settings.topics)),
            dlq_topic=settings.topics.dlq,
            batch_rows=settings.sink_batch_rows,
            linger_ms=settings.sink_linger_ms,
            native=settings.sink_native_avro,
            retry_initial_s=retry_initial_s,
            retry_max_s=retry_max_s,
            session_timeout_s=settings.sink_session_timeout_s,
        )
