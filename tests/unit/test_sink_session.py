"""The sink's consumer session: a crashed sink's partitions go to the next sink after
``SPENDSTREAM_SINK_SESSION_TIMEOUT_S`` (10 s), not librdkafka's 45 s, during which a
restarted sink sat idle."""

from __future__ import annotations

import pytest

from spendstream.config import ConfigError, load_settings
from spendstream.sinks.clickhouse_sink import consumer_config
from spendstream.sinks.config import SinkConfig


def test_the_default_session_is_ten_seconds_with_heartbeats_well_inside_it() -> None:
    settings = load_settings(topic_prefix="p.", sink_group="s")
    config = consumer_config(SinkConfig.from_settings(settings))
    assert config["session.timeout.ms"] == 10_000
    assert config["heartbeat.interval.ms"] == 3000
    # what the sink relies on besides: its own commits, from the start, long inserts allowed
    assert config["group.id"] == "p.s"
    assert config["enable.auto.commit"] is False
    assert config["auto.offset.reset"] == "earliest"
    assert config["max.poll.interval.ms"] == 600_000


def test_the_environment_sets_the_session_and_bounds_it(monkeypatch) -> None:
    monkeypatch.setenv("SPENDSTREAM_SINK_SESSION_TIMEOUT_S", "30")
    config = consumer_config(SinkConfig.from_settings(load_settings()))
    assert config["session.timeout.ms"] == 30_000
    assert config["heartbeat.interval.ms"] == 3000
    config = consumer_config(SinkConfig.from_settings(load_settings(sink_session_timeout_s=6)))
    assert config["heartbeat.interval.ms"] == 2000  # a third of the session
    with pytest.raises(ConfigError, match="SPENDSTREAM_SINK_SESSION_TIMEOUT_S"):
        load_settings(sink_session_timeout_s=5)  # below the broker's minimum (6 s)
