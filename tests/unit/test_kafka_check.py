"""How long a one-shot command waits for Kafka before it says Kafka is unreachable: 5 s
(the demo 15 s) unless ``SPENDSTREAM_KAFKA_CHECK_S`` says otherwise (tests set 1 s)."""

from __future__ import annotations

import pytest

from spendstream.cli.base import broker_check_s
from spendstream.config import ConfigError, load_settings
from spendstream.demo import DEMO_BROKER_CHECK_S


def test_users_wait_five_seconds_and_the_demo_fifteen_by_default(monkeypatch) -> None:
    monkeypatch.delenv("SPENDSTREAM_KAFKA_CHECK_S", raising=False)
    settings = load_settings()
    assert settings.kafka_check_s is None
    assert broker_check_s(settings) == 5.0
    assert DEMO_BROKER_CHECK_S == 15.0


def test_the_setting_replaces_the_wait_and_must_be_positive(monkeypatch) -> None:
    monkeypatch.setenv("SPENDSTREAM_KAFKA_CHECK_S", "1")
    assert broker_check_s(load_settings()) == 1.0
    with pytest.raises(ConfigError, match="SPENDSTREAM_KAFKA_CHECK_S"):
        load_settings(kafka_check_s=0)
