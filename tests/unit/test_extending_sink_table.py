"""docs/extending.md, "Add a sink table", done as the doc says: its migration, row builder and
registration are taken from the doc itself; without the migration the start-up check names
the table, with it the sink stores the toy topic's rows in chDB (fake consumer, no broker)."""

from __future__ import annotations

import functools
import json
import re
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from spendstream.config import Topics, load_settings
from spendstream.sinks.clickhouse_sink import ClickHouseSink
from spendstream.sinks.config import SinkConfig
from spendstream.sinks.tables import TABLES, SinkRecord, SinkTable, SinkTableError, check_tables
from spendstream.sinks.tables import register as register_in
from spendstream.sinks.warehouse import connect, migrate, migrations
from tests.unit.test_sink_loop import FakeConsumer, FakeProducer, Msg

DOC = (Path(__file__).resolve().parents[2] / "docs" / "extending.md").read_text()
SECTION = DOC.split("## Add a sink table", 1)[1].split("\n## ", 1)[0]


def blocks(lang: str) -> list[str]:
    found = re.findall(rf"```{lang}\n(.*?)```", SECTION, re.S)
    return [re.sub(r"^   ", "", b, flags=re.M) for b in found]


def doc_registry() -> tuple[dict[str, SinkTable], str]:
    """The registry with the doc's table registered as the doc says; the doc's migration."""
    (sql,) = blocks("sql")
    builder, registration = blocks("python")
    registry = dict(TABLES)
    ns: dict[str, Any] = {"json": json, "Decimal": Decimal, "Any": Any, "SinkRecord": SinkRecord,
                          "SinkTable": SinkTable,
                          "register": functools.partial(register_in, registry=registry)}  # fmt: skip
    exec(builder, ns)  # noqa: S102 (the doc's own code)
    exec(registration, ns)  # noqa: S102
    return registry, sql


def test_without_its_migration_the_start_up_check_names_the_table() -> None:
    registry, _ = doc_registry()
    topics = Topics()
    consumed = [t.topic(topics) for t in registry.values()]
    assert "usage.gpu-hours" in consumed
    with pytest.raises(SinkTableError, match="'gpu_hours' is registered but no migration"):
        check_tables(consumed, topics, migrations(), registry)
    # and a consumed topic left unregistered is named too
    with pytest.raises(SinkTableError, match="'usage.gpu-hours'"):
        check_tables(consumed, topics, migrations())


def test_with_its_migration_the_sink_stores_its_rows(chdb_dir) -> None:
    registry, sql = doc_registry()
    topics = Topics()
    steps = [*migrations(), ("0013_gpu_hours", sql)]
    tables = check_tables(["usage.gpu-hours"], topics, steps, registry)
    settings = load_settings(clickhouse_dsn=f"chdb://{chdb_dir}",
                             clickhouse_database=f"ext_{uuid.uuid4().hex[:6]}")  # fmt: skip
    client = connect(settings)
    migrate(client, steps)
    config = SinkConfig(bootstrap_servers="-", group="g", topic_prefix="",
                        topics=("usage.gpu-hours",), dlq_topic="usage.dlq", batch_rows=10)  # fmt: skip
    values = [b'{"job_id": "j1", "hours": "1.5"}', b"not json",
              b'{"job_id": "j2", "hours": "0.000000001"}']  # fmt: skip
    consumer = FakeConsumer([("usage.gpu-hours", 0)],
                            [[Msg("usage.gpu-hours", 0, o, v) for o, v in enumerate(values)]])  # fmt: skip
    dlq = FakeProducer()
    sink = ClickHouseSink(config, client, consumer, dlq, tables)  # type: ignore[arg-type]
    consumer.on_empty = sink.stop
    sink.run()
    assert client.query("SELECT job_id, hours, _offset FROM gpu_hours ORDER BY job_id"
                        ).result_rows == [("j1", Decimal("1.5"), 0),
                                          ("j2", Decimal("0.000000001"), 2)]  # fmt: skip
    assert len(dlq.sent) == 1 and consumer.commits == [("usage.gpu-hours", 0, 3)]
