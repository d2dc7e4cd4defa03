"""The one registry of sink tables: which topic fills which ClickHouse table, and how.

Each ``SinkTable`` says, in one place, everything the sink needs for a table: the topic it
consumes (a function of the configured ``Topics``, so prefixes apply), the columns and the
row builder of the decoding path, whether ClickHouse may decode the records itself (the
native path: staging tables of migrations 0004, 0007, 0012) and whether the rows carry the
input position they were derived from (origin watermarks; clickhouse_sink.py).

``check_tables`` runs when the sink starts (``ClickHouseSink.from_settings``): a topic the
sink consumes without a table, a table without a row builder or columns, or a table (or
staging table) that no migration creates stops the sink with a ``SinkTableError`` naming it,
instead of an empty table or every record in the DLQ. docs/extending.md, "Add a sink table".
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from spendstream.config import Topics
from spendstream.errors import SpendstreamError
from spendstream.schemas import batches

from . import rows as R

Position = tuple[str, int, int]


@dataclass(frozen=True, slots=True)
class SinkRecord:
    """One Kafka record as a row builder sees it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...] = ()
    #: the record's timestamp in ms since the epoch; None when Kafka gave none
    timestamp_ms: int | None = None

    @property
    def position(self) -> Position:
        return (self.topic, self.partition, self.offset)


#: the rows of one record, in the table's column order
RowBuilder = Callable[[SinkRecord], list[list[Any]]]


@dataclass(frozen=True)
class NativePath:
    """How ClickHouse reads a table's records itself (sinks/native_ingest.py): single Avro
    records of ``record_type`` go to the ``avro_staging`` table (migration 0004's shape),
    batch records to the staging table of their format (migration 0007's shape). A batch
    format missing here is decoded in Python (an older format, kept readable)."""

    record_type: str | None = None
    avro_staging: str | None = None
    batch_staging: Mapping[str, str] = field(default_factory=dict)
    #: columnar batch format -> the table's column names for its columns, in the format's
    #: order: its records go into the table itself as one Native block per batch
    columnar: Mapping[str, Sequence[str]] = field(default_factory=dict)

    @property
    def staging_tables(self) -> list[str]:
        return [t for t in (self.avro_staging, *self.batch_staging.values()) if t]


@dataclass(frozen=True)
class SinkTable:
    name: str
    #: the topic this table is filled from, given the configured topic names
    topic: Callable[[Topics], str]
    columns: Sequence[str]
    builder: RowBuilder | None
    native: NativePath | None = None
    #: the rows keep the input position they were computed from (origin_topic,
    #: origin_partition, origin_offset): a replayed worker's outputs are skipped by it
    origin_scoped: bool = False
    #: batch format -> indices of those three columns in its JSON rows
    origin_batch_columns: Mapping[str, tuple[int, int, int]] = field(default_factory=dict)

    @property
    def origin_columns(self) -> tuple[int, int, int]:
        c = list(self.columns)
        return (c.index("origin_topic"), c.index("origin_partition"), c.index("origin_offset"))


class SinkTableError(SpendstreamError):
    """The sink's tables do not fit together (a topic without a table, a table without a
    row builder or without a migration); the message names it and says what to add."""


#: table name -> its definition; ``register`` adds to it
TABLES: dict[str, SinkTable] = {}


def register(table: SinkTable, registry: dict[str, SinkTable] | None = None) -> SinkTable:
    """Add ``table`` to the registry (the module's unless another is given)."""
    target = TABLES if registry is None else registry
    if table.name in target:
        raise SinkTableError(f"sink table {table.name!r} is registered twice")
    target[table.name] = table
    return table


def sink_inputs(topics: Topics) -> list[str]:
    """Topics the sink group consumes: one per registered sink table."""
    return list(topic_tables(topics))


def topic_tables(
    topics: Topics, registry: Mapping[str, SinkTable] | None = None
) -> dict[str, SinkTable]:
    """Consumed topic -> its table."""
    return {t.topic(topics): t for t in (TABLES if registry is None else registry).values()}


_CREATE = re.compile(
    r"CREATE\s+(?:TABLE|MATERIALIZED\s+VIEW|VIEW)\s+(?:IF\s+NOT\s+EXISTS\s+)?`?(\w+)`?",
    re.IGNORECASE,
)


def created_tables(migrations: Iterable[tuple[str, str]]) -> set[str]:
    """Names of the tables and views the migrations' SQL creates."""
    names: set[str] = set()
    for _version, sql in migrations:
        text = "\n".join(line for line in sql.splitlines() if not line.strip().startswith("--"))
        names.update(m.group(1) for m in _CREATE.finditer(text))
    return names


def check_tables(
    consumed: Iterable[str],
    topics: Topics,
    migrations: Iterable[tuple[str, str]],
    registry: Mapping[str, SinkTable] | None = None,
) -> dict[str, SinkTable]:
    """Consumed topic -> table, or a ``SinkTableError`` naming what is missing."""
    registry = TABLES if registry is None else registry
    by_topic = topic_tables(topics, registry)
    created = created_tables(migrations)
    for topic in consumed:
        if topic not in by_topic:
            raise SinkTableError(
                f"the sink consumes topic {topic!r} but no sink table is registered for it; "
                "register one in sinks/tables.py (docs/extending.md, 'Add a sink table')"
            )
    for table in registry.values():
        if table.builder is None or not table.columns:
            raise SinkTableError(
                f"sink table {table.name!r} has no row builder and columns; give it the "
                "function that turns one record into rows (sinks/rows.py)"
            )
        for name in [table.name, *(table.native.staging_tables if table.native else [])]:
            if name not in created:
                raise SinkTableError(
                    f"sink table {name!r} is registered but no migration creates it; add "
                    "sinks/migrations/NNNN_<what>.sql with CREATE TABLE IF NOT EXISTS " + name
                )
        if table.origin_scoped:
            try:
                table.origin_columns  # noqa: B018 (raises when a column is missing)
            except ValueError:
                raise SinkTableError(
                    f"sink table {table.name!r} is origin-scoped but lacks origin_topic, "
                    "origin_partition or origin_offset among its columns"
                ) from None
    return {t: by_topic[t] for t in consumed}


def _single(build: Callable[[bytes, Position], list[Any]]) -> RowBuilder:
    return lambda r: [build(r.value, r.position)]  # type: ignore[arg-type]


def _budget(r: SinkRecord) -> list[list[Any]]:
    # a tombstone's actor and note are in its headers, its time is the record's timestamp
    return [R.budget_row(r.value, r.position, r.key, r.headers, r.timestamp_ms)]


register(SinkTable(
    "priced_usage", lambda t: t.priced, R.PRICED_COLUMNS,
    lambda r: R.priced_rows(r.value, r.position),  # type: ignore[arg-type]
    # priced/3 columns are priced_usage's first 45 in its order (money and times as the
    # raw values of Decimal(38, 9) and DateTime64(6), so nothing is converted)
    NativePath(batch_staging={batches.PRICED_V2: "priced_usage_rows_json"},
               columnar={batches.PRICED_V3: R.PRICED_COLUMNS[:len(batches.PRICED2_COLUMNS)]}),
    origin_scoped=True,
    origin_batch_columns={
        batches.PRICED_V1: (batches.P["origin_topic"], batches.P["origin_partition"],
                            batches.P["origin_offset"]),
        **dict.fromkeys((batches.PRICED_V2, batches.PRICED_V3),
                        (batches.P2["origin_topic"], batches.P2["origin_partition"],
                         batches.P2["origin_offset"])),
    },
))  # fmt: skip
register(SinkTable(
    "cost_allocations", lambda t: t.allocations, R.ALLOCATION_COLUMNS,
    lambda r: R.allocation_rows(r.value, r.position),  # type: ignore[arg-type]
    # allocations/2 columns are cost_allocations' after allocation_id (which the table
    # computes: migration 0013), in its order
    NativePath("CostAllocation", "cost_allocations_avro",
               {batches.ALLOCATIONS_V1: "cost_allocation_rows_json"},
               {batches.ALLOCATIONS_V2: R.ALLOCATION_COLUMNS[1:1 + len(batches.A)]}),
    origin_scoped=True,
    origin_batch_columns=dict.fromkeys(
        (batches.ALLOCATIONS_V1, batches.ALLOCATIONS_V2),
        (batches.A["origin_topic"], batches.A["origin_partition"], batches.A["origin_offset"]),
    ),
))  # fmt: skip
register(SinkTable("budget_alerts", lambda t: t.alerts, R.ALERT_COLUMNS, _single(R.alert_row)))
register(SinkTable("budgets", lambda t: t.budgets, R.BUDGET_COLUMNS, _budget))
register(SinkTable("dead_letters", lambda t: t.dlq, R.DLQ_COLUMNS, _single(R.dlq_row),
                   origin_scoped=True))  # fmt: skip
register(SinkTable("alert_actions", lambda t: t.alert_actions, R.ACTION_COLUMNS,
                   _single(R.action_row)))  # fmt: skip
register(SinkTable("alert_deliveries", lambda t: t.alert_deliveries, R.DELIVERY_COLUMNS,
                   _single(R.delivery_row)))  # fmt: skip
register(SinkTable("allocation_conversions", lambda t: t.conversions, R.CONVERSION_COLUMNS,
                   lambda r: R.conversion_rows(r.value, r.position)))  # type: ignore[arg-type]  # fmt: skip
register(SinkTable("fx_rates", lambda t: t.fx_rates, R.FX_RATE_COLUMNS,
                   lambda r: R.fx_rate_rows(r.value, r.position)))  # fmt: skip
