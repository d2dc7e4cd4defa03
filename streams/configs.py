"""What each worker stage is configured with, built once from ``Settings`` at the edge.

``spendstream worker`` (the CLI command, each stage's process) calls
``PriceStageConfig.from_settings`` or ``AggregatorConfig.from_settings`` and hands the
result to ``run_price_worker`` / ``create_worker``. Those classmethods are the only code
of the stages that reads ``Settings``; the rest of ``streams/`` sees these small frozen
values, so a test builds a stage from a config literal and a reader sees what the stage
depends on (tests/unit/test_component_configs.py checks that no other module here
imports spendstream.config).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal

from spendstream.kafka_config import KafkaConfig

from .aggregation import AlertPolicy
from .price_loop import price_metrics_path

if TYPE_CHECKING:
    from spendstream.config import Settings
    from spendstream.sinks.warehouse import Warehouse

#: opens the worker's way to ClickHouse, or None when no sink runs (closed by the caller)
WarehouseOpener = Callable[[], "Warehouse | None"]


def _no_warehouse() -> Warehouse | None:
    return None


@dataclass(frozen=True, slots=True)
class PriceStageConfig:
    """The price stage's process (price_worker.py): its consumer, the price rules, the
    dedupe window, its micro-batches and where it leaves its counters."""

    kafka: KafkaConfig
    #: Confluent Schema Registry URL; "" = Avro single-object encoding
    schema_registry_url: str = ""
    session_timeout_s: int = 10
    #: the user's price catalog layered over the bundled one
    price_catalog: Path | None = None
    max_clock_skew_s: int = 300
    unknown_price: Literal["dlq", "flag"] = "dlq"
    late_periods: int = 1
    dedupe_window_s: int = 86_400
    batch_size: int = 500
    batch_linger_ms: int = 50
    #: the counters file the aggregator's /metrics reads (price_loop.price_metrics_path)
    metrics_path: Path | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> PriceStageConfig:
        return cls(
            kafka=KafkaConfig.from_settings(settings),
            schema_registry_url=settings.schema_registry_url,
            session_timeout_s=settings.worker_session_timeout_s,
            price_catalog=settings.price_catalog,
            max_clock_skew_s=settings.max_clock_skew_s,
            unknown_price=settings.unknown_price,
            late_periods=settings.late_periods,
            dedupe_window_s=settings.dedupe_window_s,
            batch_size=settings.batch_size,
            batch_linger_ms=settings.batch_linger_ms,
            metrics_path=price_metrics_path(settings.worker_dir, settings.worker_web_port),
        )

    @property
    def max_skew(self) -> timedelta:
        return timedelta(seconds=self.max_clock_skew_s)

    @property
    def linger_s(self) -> float:
        return self.batch_linger_ms / 1000


@dataclass(frozen=True, slots=True)
class AggregatorConfig:
    """The aggregating worker (app.py on faust, with aggregate_stage.py, checkpoint.py
    and the HTTP API of api.py): its app and consumer, the checkpoint interval, the
    alert rules, the API's tokens and its way to ClickHouse."""

    kafka: KafkaConfig
    #: this worker's faust state (under the data directory, one per web port)
    data_dir: Path
    #: the price stage's counters file of the same worker (served on /metrics)
    price_metrics_path: Path
    schema_registry_url: str = ""
    topic_partitions: int = 4
    topic_replication: int = 1
    session_timeout_s: int = 10
    recovery_timeout_s: int = 300
    commit_interval_ms: int = 1000
    trace_batches: bool = False
    batch_size: int = 500
    batch_linger_ms: int = 50
    web_bind: str = "127.0.0.1"
    web_port: int = 6066
    #: the API's pricing preview uses the same catalog as the price stage
    price_catalog: Path | None = None
    alerts: AlertPolicy = field(default_factory=AlertPolicy)
    #: token -> actor name of every token the API accepts for changes (never shown)
    api_tokens: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), repr=False)
    #: the API's usage and the dashboard read ClickHouse through this (sinks/warehouse.py
    #: owns how: the sink's query port with chDB, else the server)
    open_warehouse: WarehouseOpener = field(default=_no_warehouse, repr=False, compare=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> AggregatorConfig:
        return cls(
            kafka=KafkaConfig.from_settings(settings),
            data_dir=settings.worker_dir / f"w{settings.worker_web_port}",
            price_metrics_path=price_metrics_path(settings.worker_dir, settings.worker_web_port),
            schema_registry_url=settings.schema_registry_url,
            topic_partitions=settings.topic_partitions,
            topic_replication=settings.topic_replication,
            session_timeout_s=settings.worker_session_timeout_s,
            recovery_timeout_s=settings.worker_recovery_timeout_s,
            commit_interval_ms=settings.worker_commit_interval_ms,
            trace_batches=settings.worker_trace_batches,
            batch_size=settings.batch_size,
            batch_linger_ms=settings.batch_linger_ms,
            web_bind=settings.worker_web_bind,
            web_port=settings.worker_web_port,
            price_catalog=settings.price_catalog,
            alerts=AlertPolicy.of(
                cooldown_s=settings.alert_cooldown_s,
                anomaly_factor=settings.anomaly_factor,
                forecast_min_elapsed=settings.forecast_min_elapsed,
            ),
            api_tokens=MappingProxyType(settings.api_token_names()),
            open_warehouse=_warehouse_of(settings),
        )

    @property
    def linger_s(self) -> float:
        return self.batch_linger_ms / 1000

    @property
    def checkpoint_interval_s(self) -> float:
        return self.commit_interval_ms / 1000


def _warehouse_of(settings: Settings) -> WarehouseOpener:
    """The worker's way to ClickHouse: the running sink's query port (embedded chDB) or
    the server. A worker never opens the chDB directory itself: the sink holds it. How to
    reach ClickHouse is the sink's configuration, so it is read here, at the edge, and the
    worker only gets the opener."""

    def open_warehouse() -> Warehouse | None:
        from spendstream.sinks.warehouse import DirectWarehouse, connect, sink_warehouse

        if settings.is_embedded_clickhouse:
            return sink_warehouse(settings)
        return DirectWarehouse(connect(settings, create_database=False))

    return open_warehouse
