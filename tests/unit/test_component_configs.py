"""Per-component configs (issue #9, point 6): each is frozen, built from ``Settings`` only
by its ``from_settings`` at the edge, and the schema registry is configured once per
process, never by library code."""

from __future__ import annotations

import ast
import dataclasses
import struct
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from spendstream.config import load_settings
from spendstream.errors import UserError
from spendstream.kafka_config import KafkaConfig
from spendstream.schemas import avro
from spendstream.schemas.avro import RegistryConflict, configure_registry, ensure_registry
from spendstream.sinks.notify.service_config import NotifyConfig
from spendstream.streams.aggregation import AlertPolicy
from spendstream.streams.app import recent_usage
from spendstream.streams.configs import AggregatorConfig, PriceStageConfig
from spendstream.topics import notify_group, price_group, seen_topic, worker_group
from tests.conftest import llm_event
from tests.registry_stub import RegistryStub

ROOT = Path(__file__).resolve().parents[2]
#: the component packages, as the installed package names them
PACKAGES = {"streams": "spendstream.streams", "sinks/notify": "spendstream.sinks.notify"}
#: the only modules of those packages that read Settings: the configs' from_settings
EDGE = {"streams/configs.py", "sinks/notify/service_config.py"}
#: library code: it follows the process's registry and never configures one
LIBRARY = [*PACKAGES, "spendstream/producer.py"]


def imports_of(path: Path, package: str) -> set[str]:
    """Every module ``path`` imports (relative imports resolved against ``package``;
    imports inside functions and TYPE_CHECKING blocks included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def modules(where: str) -> list[Path]:
    target = ROOT / where
    return [target] if target.is_file() else sorted(target.glob("*.py"))


def test_components_never_import_the_settings_module() -> None:
    offenders = []
    for folder, package in PACKAGES.items():
        for path in modules(folder):
            rel = path.relative_to(ROOT).as_posix()
            reads = {m for m in imports_of(path, package)
                     if m == "spendstream.config" or m.startswith("spendstream.config.")}  # fmt: skip
            if rel not in EDGE and reads:
                offenders.append(f"{rel}: {sorted(reads)}")
    assert offenders == [], "build a component config at the edge instead: " + "; ".join(offenders)


def test_the_import_check_sees_the_edge_modules_reading_settings() -> None:
    """The check above would catch an import: it finds the edge modules' own one (a
    TYPE_CHECKING import) and resolves relative imports."""
    for rel in EDGE:
        package = PACKAGES[rel.rsplit("/", 1)[0]]
        assert "spendstream.config.Settings" in imports_of(ROOT / rel, package)
    app = imports_of(ROOT / "streams/app.py", "spendstream.streams")
    assert "spendstream.streams.configs.AggregatorConfig" in app


def test_library_code_never_configures_the_registry() -> None:
    calls = []
    for where in LIBRARY:
        for path in modules(where):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call):
                    name = getattr(node.func, "id", getattr(node.func, "attr", None))
                    if name == "configure_registry":
                        calls.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert calls == []


# --- the configs -----------------------------------------------------------------------
@pytest.fixture
def settings(tmp_path: Path) -> Any:
    return load_settings(
        data_dir=tmp_path, topic_prefix="p.", app_id="app", batch_size=7, batch_linger_ms=30,
        worker_web_port=7001, worker_session_timeout_s=12, worker_commit_interval_ms=400,
        worker_recovery_timeout_s=90, worker_trace_batches=True, alert_cooldown_s=60,
        anomaly_factor=Decimal(3), forecast_min_elapsed=Decimal("0.2"),
        api_tokens="ops=s3cret-token-1", max_clock_skew_s=10, unknown_price="flag",
        late_periods=2, dedupe_window_s=120, notify_group="alerts-out", notify_workers=3,
        notify_metrics_port=9999, schema_registry_url="http://registry:8081",
        topic_partitions=6,
    )  # fmt: skip


def test_configs_are_frozen_and_slotted(settings: Any) -> None:
    configs = [
        KafkaConfig.from_settings(settings),
        PriceStageConfig.from_settings(settings),
        AggregatorConfig.from_settings(settings),
        NotifyConfig.from_settings(settings),
        AlertPolicy(),
    ]
    for config in configs:
        first = dataclasses.fields(config)[0].name
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(config, first, None)
        assert not hasattr(config, "__dict__"), type(config).__name__


def test_kafka_config_names_topics_and_groups_as_the_settings_do(settings: Any) -> None:
    kafka = KafkaConfig.from_settings(settings)
    assert kafka == KafkaConfig("127.0.0.1:19092", topic_prefix="p.", app_id="app")
    assert kafka.topics.allocations == settings.topics.allocations == "p.cost-allocations"
    for name in (worker_group, price_group, seen_topic):
        assert name(kafka) == name(settings)


def test_price_stage_config_from_settings(settings: Any, tmp_path: Path) -> None:
    config = PriceStageConfig.from_settings(settings)
    assert config.kafka == KafkaConfig.from_settings(settings)
    assert config.schema_registry_url == "http://registry:8081"
    assert (config.session_timeout_s, config.batch_size, config.linger_s) == (12, 7, 0.03)
    assert config.max_skew.total_seconds() == 10
    assert (config.unknown_price, config.late_periods, config.dedupe_window_s) == ("flag", 2, 120)
    assert config.metrics_path == tmp_path / "worker" / "price-7001.json"


def test_aggregator_config_from_settings(settings: Any, tmp_path: Path) -> None:
    config = AggregatorConfig.from_settings(settings)
    # the aggregator serves the counters the same worker's price stage writes
    assert config.price_metrics_path == PriceStageConfig.from_settings(settings).metrics_path
    assert config.data_dir == tmp_path / "worker" / "w7001"
    assert (config.web_port, config.web_bind, config.topic_partitions) == (7001, "127.0.0.1", 6)
    assert (config.session_timeout_s, config.recovery_timeout_s) == (12, 90)
    assert (config.checkpoint_interval_s, config.trace_batches) == (0.4, True)
    assert (config.batch_size, config.linger_s) == (7, 0.03)
    assert config.alerts == AlertPolicy(
        cooldown_us=60_000_000, anomaly_factor=Decimal(3), forecast_min_elapsed=Decimal("0.2")
    )
    assert dict(config.api_tokens) == {"s3cret-token-1": "ops"}
    assert "s3cret" not in repr(config)  # a config in a log line shows no token


def test_alert_policy_of_converts_the_cooldown_to_microseconds() -> None:
    policy = AlertPolicy.of(
        cooldown_s=5, anomaly_factor=Decimal(2), forecast_min_elapsed=Decimal("0.5")
    )
    assert policy.cooldown_us == 5_000_000
    assert policy.anomaly_min_share == AlertPolicy().anomaly_min_share


def test_notify_config_from_settings(settings: Any) -> None:
    config = NotifyConfig.from_settings(settings)
    assert config.group == notify_group(settings) == "p.alerts-out"
    assert (config.workers, config.metrics_port, config.session_timeout_s) == (3, 9999, 12)
    assert config.kafka.topics.alerts == "p.budget-alerts"


def test_the_api_reads_usage_through_the_configs_opener() -> None:
    class Result:
        def as_dicts(self) -> list[dict[str, Any]]:
            return [{"event_id": "e1", "amount": Decimal("0.000000001")}]

    class Warehouse:
        closed = False
        asked: dict[str, Any] = {}

        def query(self, sql: str, parameters: dict[str, Any] | None = None) -> Result:
            self.asked = parameters or {}
            return Result()

        def close(self) -> None:
            self.closed = True

    warehouse = Warehouse()
    rows = recent_usage(lambda: warehouse, "b1", 5)
    assert rows == [{"event_id": "e1", "amount": "0.000000001"}]
    assert warehouse.asked == {"b": "b1", "n": 5} and warehouse.closed
    assert recent_usage(lambda: None, "b1", 5) is None
    assert AggregatorConfig(KafkaConfig("h:1"), Path("d"), Path("m")).open_warehouse() is None


# --- the schema registry: once per process ----------------------------------------------
@pytest.fixture
def fresh_process(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The registry state of a process that configured nothing yet; restored after."""
    monkeypatch.setattr(avro, "_configured_url", None)
    monkeypatch.setattr(avro, "_registry", None)
    avro.codec.cache_clear()
    avro.framed_codec.cache_clear()
    stub = RegistryStub()
    yield stub
    stub.close()
    avro.codec.cache_clear()
    avro.framed_codec.cache_clear()


def framing(topic: str = "usage.llm") -> bytes:
    return avro.framed_codec("UsageEvent", topic).encode(llm_event().to_avro())[:1]


def test_ensure_configures_a_fresh_process_then_keeps_it(fresh_process: RegistryStub) -> None:
    ensure_registry(fresh_process.url)
    assert framing() == b"\x00"  # Confluent framing through the registry
    writer = avro.framed_codec("UsageEvent", "usage.llm")
    ensure_registry(fresh_process.url)  # the same registry: nothing changes, caches kept
    assert avro.framed_codec("UsageEvent", "usage.llm") is writer


def test_ensure_refuses_another_registry_and_keeps_the_framing(
    fresh_process: RegistryStub,
) -> None:
    configure_registry("http://user:pa55word@127.0.0.1:9")
    with pytest.raises(RegistryConflict) as caught:
        ensure_registry(None)
    assert isinstance(caught.value, UserError)
    assert "127.0.0.1:9" in str(caught.value) and "pa55word" not in str(caught.value)
    configure_registry(None)
    with pytest.raises(RegistryConflict, match="no schema registry"):
        ensure_registry(fresh_process.url)
    assert framing() == b"\xc3"  # still single-object encoding


def test_the_sdk_configures_the_registry_from_the_environment_once(
    fresh_process: RegistryStub, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from spendstream.producer import UsagePublisher

    monkeypatch.setenv("SPENDSTREAM_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SPENDSTREAM_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9")
    monkeypatch.setenv("SPENDSTREAM_SCHEMA_REGISTRY_URL", fresh_process.url)
    UsagePublisher().close()  # a user who only set the variable
    data = avro.framed_codec("UsageEvent", "usage.llm").encode(llm_event().to_avro())
    (schema_id,) = struct.unpack(">I", data[1:5])
    assert data[0] == 0 and fresh_process.subjects["usage.llm-value"] == [schema_id]
    # a second publisher naming no registry does not switch the process's framing
    monkeypatch.delenv("SPENDSTREAM_SCHEMA_REGISTRY_URL")
    with pytest.raises(RegistryConflict):
        UsagePublisher()
    assert framing() == b"\x00"


def test_producers_batch_20_ms_unless_told_otherwise(settings: Any) -> None:
    """librdkafka sends one partition's batch per request, and a co-located broker's CPU
    goes by requests: the SDK lingers 20 ms (docs/design.md); a caller's own setting
    wins, and the delivery guarantees stay."""
    from spendstream.producer import producer_config

    conf = producer_config(KafkaConfig.from_settings(settings))
    assert (conf["linger.ms"], conf["acks"], conf["enable.idempotence"]) == (20, "all", True)
    assert producer_config(settings, **{"linger.ms": 5})["linger.ms"] == 5
    # a leader taken as -1 while a restarted broker came up is asked again within 10 s
    assert conf["topic.metadata.refresh.interval.ms"] == 10_000
