"""docker-compose.yml cannot run here (no Docker engine), so check its structure and wiring."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from spendstream.config import Settings, settings_env_names

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def test_services_exist(compose):
    assert {"kafka", "clickhouse", "topics", "worker", "sink"} <= set(compose["services"])


def test_kafka_is_single_node_kraft_with_transactions(compose):
    kafka = compose["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = env_of(kafka)
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "1"
    assert env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "1"
    assert "healthcheck" in kafka


def test_services_wait_for_their_dependencies(compose):
    services = compose["services"]
    assert "healthcheck" in services["clickhouse"]
    for name in ("worker", "sink"):
        deps = services[name]["depends_on"]
        assert deps["kafka"]["condition"] == "service_healthy"
        assert deps["topics"]["condition"] == "service_completed_successfully"
    assert services["sink"]["depends_on"]["clickhouse"]["condition"] == "service_healthy"


def test_commands_run_the_cli(compose):
    services = compose["services"]
    assert services["worker"]["command"] == ["worker"]
    assert services["sink"]["command"] == ["sink"]
    assert services["topics"]["command"] == ["topics", "create"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["spendstream"]' in dockerfile


def test_every_spendstream_variable_is_a_known_setting(compose):
    known = settings_env_names()
    seen = set()
    for name, service in compose["services"].items():
        for var in env_of(service):
            if var.startswith("SPENDSTREAM_"):
                seen.add(var)
                assert var in known, f"{name} sets {var}, which no setting reads"
    assert {"SPENDSTREAM_KAFKA_BOOTSTRAP_SERVERS", "SPENDSTREAM_CLICKHOUSE_DSN"} <= seen


def test_shared_environment_builds_valid_settings(compose, monkeypatch):
    for var in list(__import__("os").environ):
        if var.startswith("SPENDSTREAM_"):
            monkeypatch.delenv(var)
    for var, value in env_of(compose["services"]["worker"]).items():
        monkeypatch.setenv(var, value)
    settings = Settings()
    assert settings.bootstrap_servers == "kafka:9092"
    assert not settings.uses_local_kafka
    assert settings.effective_clickhouse_dsn.startswith("http://")
    assert not settings.is_embedded_clickhouse
    assert settings.worker_web_bind == "0.0.0.0"


def test_notify_service_runs_the_example_rules(compose):
    from spendstream.sinks.notify.config import parse_config

    notify = compose["services"]["notify"]
    assert notify["command"] == ["notify"] and notify["profiles"] == ["notify"]
    env = env_of(notify)
    rules = env["SPENDSTREAM_NOTIFY_RULES"]
    assert rules.startswith("/app/")
    text = (ROOT / rules.removeprefix("/app/")).read_text()
    # every variable the rules read is passed through from the host
    needed = set(re.findall(r"\$\{([A-Z_]+)\}", re.sub(r"#.*", "", text)))
    assert needed and needed <= set(env)
    fake = {"ALERTS_WEBHOOK_URL": "https://hooks.example/spend", "SLACK_WEBHOOK_URL":
            "https://hooks.slack.example/T/B/x", "ALERTS_WEBHOOK_SECRET": "x" * 32,
            "SMTP_HOST": "smtp.example", "SMTP_USER": "u", "SMTP_PASSWORD": "p"}  # fmt: skip
    config = parse_config(text, rules, env=fake)
    assert set(config.channels) == {"ops-webhook", "finance-slack", "oncall-email"}
    assert notify["depends_on"]["topics"]["condition"] == "service_completed_successfully"
