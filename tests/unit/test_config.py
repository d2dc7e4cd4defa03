import pytest

from spendstream.config import ConfigError, load_settings, settings_env_names


def test_defaults_work_locally(tmp_path, monkeypatch):
    monkeypatch.setenv("SPENDSTREAM_DATA_DIR", str(tmp_path))
    s = load_settings()
    assert s.uses_local_kafka and s.bootstrap_servers == "127.0.0.1:19092"
    assert s.effective_clickhouse_dsn == f"chdb://{tmp_path}/chdb"
    assert s.topics.budgets == "budgets"


def test_prefix_applies_to_every_topic(monkeypatch):
    monkeypatch.setenv("SPENDSTREAM_TOPIC_PREFIX", "acme.")
    s = load_settings()
    assert all(t.startswith("acme.") for t in s.topics.all_topics())
    assert s.topics.all_topics()["acme.budgets"]["cleanup.policy"] == "compact"
    assert s.topics.all_topics()["acme.budget-status"]["cleanup.policy"] == "compact"


@pytest.mark.parametrize(
    ("var", "value", "needle"),
    [
        ("SPENDSTREAM_KAFKA_BOOTSTRAP_SERVERS", "localhost", "host:port"),
        ("SPENDSTREAM_CLICKHOUSE_DSN", "mysql://x", "chdb://"),
        ("SPENDSTREAM_TOPIC_PARTITIONS", "zero", "SPENDSTREAM_TOPIC_PARTITIONS"),
        ("SPENDSTREAM_UNKNOWN_PRICE", "ignore", "SPENDSTREAM_UNKNOWN_PRICE"),
    ],
)
def test_invalid_settings_name_the_variable(monkeypatch, var, value, needle):
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert needle in str(info.value)


def test_env_names_cover_fields():
    names = settings_env_names()
    assert {"SPENDSTREAM_DATA_DIR", "SPENDSTREAM_KAFKA_BOOTSTRAP_SERVERS",
            "SPENDSTREAM_CLICKHOUSE_DSN"} <= names  # fmt: skip


def test_a_copy_with_another_prefix_names_its_own_topics():
    from spendstream.config import Settings

    base = Settings(topic_prefix="a.")
    assert base.topics.llm == "a.usage.llm"
    copy = base.model_copy(update={"topic_prefix": "b."})
    assert copy.topics.llm == "b.usage.llm" and copy.topics.budgets == "b.budgets"
    assert base.topics.llm == "a.usage.llm"
