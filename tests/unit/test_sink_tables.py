"""The registry of sink tables and its start-up check (sinks/tables.py)."""

from __future__ import annotations

import pytest

from spendstream.config import Topics, load_settings
from spendstream.errors import SpendstreamError
from spendstream.sinks.config import SinkConfig
from spendstream.sinks.tables import (
    TABLES,
    SinkTable,
    SinkTableError,
    check_tables,
    created_tables,
    register,
    sink_inputs,
    topic_tables,
)
from spendstream.sinks.warehouse import migrations

TOPICS = Topics("p.")


def toy(**changes) -> SinkTable:  # type: ignore[no-untyped-def]
    fields = {"name": "toy", "topic": lambda t: t.name("toy"), "columns": ["a", "_offset"],
              "builder": lambda r: [[r.value, r.offset]]}  # fmt: skip
    return SinkTable(**{**fields, **changes})


def test_every_registered_table_has_its_migrations_and_its_topic_is_consumed() -> None:
    settings = load_settings(topic_prefix="p.")
    consumed = sink_inputs(settings.topics)
    tables = check_tables(consumed, settings.topics, migrations())
    assert {t.name for t in tables.values()} == set(TABLES)
    assert tables["p.usage.priced"].name == "priced_usage"
    assert SinkConfig.from_settings(settings).topics == tuple(consumed)
    assert "priced_usage_rows_json" in created_tables(migrations())


def test_a_consumed_topic_without_a_table_is_a_startup_error() -> None:
    with pytest.raises(SinkTableError, match="'p.usage.mystery'.*no sink table"):
        check_tables([*topic_tables(TOPICS), "p.usage.mystery"], TOPICS, migrations())


def test_a_table_without_a_builder_is_a_startup_error() -> None:
    registry = dict(TABLES)
    register(toy(builder=None), registry)
    toy_sql = [("9999_toy", "CREATE TABLE IF NOT EXISTS toy (a String) ENGINE = Memory")]
    with pytest.raises(SinkTableError, match="'toy' has no row builder"):
        check_tables(["p.toy"], TOPICS, [*migrations(), *toy_sql], registry)


def test_a_table_no_migration_creates_is_a_startup_error() -> None:
    registry = dict(TABLES)
    register(toy(), registry)
    with pytest.raises(SinkTableError, match="'toy' is registered but no migration creates"):
        check_tables(["p.toy"], TOPICS, migrations(), registry)
    # a commented-out statement creates nothing either
    commented = [("9999_toy", "-- CREATE TABLE IF NOT EXISTS toy (a String) ENGINE = Memory")]
    with pytest.raises(SinkTableError, match="'toy'"):
        check_tables(["p.toy"], TOPICS, [*migrations(), *commented], registry)


def test_a_native_staging_table_no_migration_creates_is_a_startup_error() -> None:
    from spendstream.sinks.tables import NativePath

    registry = {"toy": toy(native=NativePath(batch_staging={"toy/1": "toy_rows_json"}))}
    toy_sql = [("9999_toy", "CREATE TABLE IF NOT EXISTS toy (a String) ENGINE = Memory")]
    with pytest.raises(SinkTableError, match="'toy_rows_json'"):
        check_tables(["p.toy"], TOPICS, toy_sql, registry)


def test_registry_errors_are_spendstream_errors_and_names_are_unique() -> None:
    assert issubclass(SinkTableError, SpendstreamError)
    with pytest.raises(SinkTableError, match="registered twice"):
        register(toy(name="priced_usage"), dict(TABLES))
    assert sorted(topic_tables(TOPICS)) == sorted(
        sink_inputs(load_settings(topic_prefix="p.").topics)
    )
