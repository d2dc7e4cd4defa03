"""Columnar batch records (schemas/columnar.py): rows in, the same rows out, for any values
the formats carry; the bytes are ClickHouse's own Native encoding (clickhouse-connect's
serializer writes the same); a record that does not read as its format says is refused
with a reason; many records join into one Native block that ClickHouse stores exactly."""

from __future__ import annotations

import uuid
from array import array
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest
from clickhouse_connect.datatypes.registry import get_from_name
from clickhouse_connect.driver.insert import InsertContext
from hypothesis import given, settings
from hypothesis import strategies as st

from spendstream.config import load_settings
from spendstream.schemas import batches
from spendstream.schemas.columnar import KINDS
from spendstream.sinks.native_ingest import NativeBatch, native_block
from spendstream.sinks.rows import ALLOCATION_COLUMNS, allocation_rows
from spendstream.sinks.tables import TABLES, SinkRecord
from spendstream.sinks.warehouse import connect, migrate
from spendstream.sinks.writer import ClickHouseWriter, WriteBatch

text = st.text(max_size=12)
i128 = st.integers(-(2**127), 2**127 - 1)
nanos = st.one_of(st.integers(0, 10**15), i128)
micros = st.integers(-(2**63), 2**63 - 1)
tags = st.dictionaries(text, text, max_size=3)
lines = st.lists(st.tuples(text, nanos, text, nanos).map(list), max_size=4)

VALUES: dict[str, st.SearchStrategy[Any]] = {
    "str": text, "u8": st.integers(0, 255), "i32": st.integers(-(2**31), 2**31 - 1),
    "i64": micros, "u64": st.integers(0, 2**64 - 1), "i128": i128, "micros": micros,
    "nanos": nanos, "str_map": tags, "cost_lines": lines,
}  # fmt: skip


def rows_of(version: str) -> st.SearchStrategy[list[list[Any]]]:
    kinds = [kind for _, kind in batches.COLUMNAR[version].columns]
    return st.lists(st.tuples(*[VALUES[k] for k in kinds]).map(list), max_size=6)


@settings(max_examples=150, deadline=None)
@given(rows=rows_of(batches.PRICED_V3))
def test_priced_rows_come_back_as_they_went_in(rows: list[list[Any]]) -> None:
    value = batches.encode(batches.PRICED_V3, rows)
    assert batches.is_batch(value) and batches.version_of(value) == batches.PRICED_V3
    assert batches.decode(value) == (batches.PRICED_V3, rows)


@settings(max_examples=150, deadline=None)
@given(rows=rows_of(batches.ALLOCATIONS_V2))
def test_allocation_rows_come_back_as_they_went_in(rows: list[list[Any]]) -> None:
    value = batches.encode(batches.ALLOCATIONS_V2, rows)
    assert batches.decode(value) == (batches.ALLOCATIONS_V2, rows)


#: a kind -> the ClickHouse type clickhouse-connect serializes the same values as
SERIALIZER = {
    "str": "String", "u8": "UInt8", "i32": "Int32", "i64": "Int64", "u64": "UInt64",
    "i128": "Int128", "micros": "Int64", "nanos": "Int128", "str_map": "Map(String, String)",
    "cost_lines": "Array(Tuple(String, Int128, String, Int128))",
}  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_each_kind_is_clickhouse_natives_own_encoding(data: st.DataObject) -> None:
    for name, kind in KINDS.items():
        values = data.draw(st.lists(VALUES[name], max_size=5))
        if name == "cost_lines":
            values = [[tuple(line) for line in v] for v in values]
        theirs = bytearray()
        get_from_name(SERIALIZER[name]).write_column_data(values, theirs, InsertContext("", [], []))
        assert b"".join(kind.write(values)) == bytes(theirs), name


def test_no_rows_is_a_record_too() -> None:
    for version in batches.COLUMNAR:
        assert batches.decode(batches.encode(version, [])) == (version, [])


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        (lambda v: v[:-3], "its head says"),
        (lambda v: v + b"xx", "its head says"),
        (lambda v: v.replace(b'"n":2', b'"n":3', 1), "corrupt"),
        (lambda v: v.split(b"\n", 1)[0], "no head line"),
        (lambda v: v.replace(b'"len":[', b'"len":[1,', 1), "does not fit"),
        (lambda v: v.replace(b"\n", b" ", 1), "head"),
        (lambda v: b'{"v":"allocations/2",' + b"not json\n", "head"),
    ],
)
def test_a_record_that_does_not_read_as_its_format_says_is_refused(mangle, reason) -> None:
    row = ["e1", "b1", "b1", "2026-11", 0, 1, 2, 5, "USD", "llm", "openai", "m", "o", "t",
           "p", "u", "d", "f", {"k": "v"}, "usage.llm", 0, 7]  # fmt: skip
    value = batches.encode(batches.ALLOCATIONS_V2, [row, row])
    with pytest.raises(batches.BatchFormatError, match=reason):
        batches.decode(mangle(value))


def test_rows_that_do_not_fit_the_format_are_refused_when_written() -> None:
    with pytest.raises(batches.BatchFormatError, match="allocations/2"):
        batches.encode(batches.ALLOCATIONS_V2, [["too", "short"]])
    with pytest.raises(batches.BatchFormatError, match="allocations/2"):
        batches.encode(batches.ALLOCATIONS_V2, [[1.5] * len(batches.ALLOCATION_COLUMNS)])
    # a missing string is not written as "" behind the caller's back
    row = allocation(1, "b1")
    row[batches.A["org"]] = None
    with pytest.raises(batches.BatchFormatError, match="column org"):
        batches.encode(batches.ALLOCATIONS_V2, [row])


def allocation(i: int, budget: str, **tags: str) -> list[Any]:
    return [f"e{i}", budget, budget, "2026-11", 1_793_491_200_000_000, 1_796_083_200_000_000,
            1_795_000_000_000_000 + i, 1_000_000_001 * i + 1, "USD", "llm", "openai",
            "gpt-4o", "acme", "ml", "", "", "", "", tags, "usage.llm", i % 3, 100 + i]  # fmt: skip


def test_records_join_into_one_block_that_clickhouse_stores_exactly(chdb_dir) -> None:
    db = f"col_{uuid.uuid4().hex[:6]}"
    client = connect(load_settings(clickhouse_dsn=f"chdb://{chdb_dir}", clickhouse_database=db))
    migrate(client)
    table = TABLES["cost_allocations"]
    names = table.native.columnar[batches.ALLOCATIONS_V2]  # type: ignore[union-attr]
    records = [
        [allocation(1, "b1", env="prod"), allocation(2, "b2")],
        [],  # a record whose rows were all replays (filtered by the sink)
        [allocation(3, "b1", env="dev", team="x"), allocation(4, "b1"), allocation(5, "b9")],
    ]
    values = [batches.encode(batches.ALLOCATIONS_V2, rows) for rows in records]
    native = NativeBatch(None, b"", columnar={batches.ALLOCATIONS_V2: ("cost_allocations", names)},
                         topic="cost-allocations", partition=3)  # fmt: skip
    assert [native.add_columnar(batches.ALLOCATIONS_V2, v, 40 + i, i)
            for i, v in enumerate(values)] == [2, 0, 3]  # fmt: skip
    sink_records = [
        SinkRecord("cost-allocations", 3, 40 + i, None, v) for i, v in enumerate(values)
    ]
    assert ClickHouseWriter(client).write(WriteBatch(table, sink_records, native=native), "t") == []
    decoded = [row for r in sink_records for row in allocation_rows(r.value, r.position)]
    cols = ", ".join(f"`{c}`" for c in ALLOCATION_COLUMNS)
    stored = client.query(f"SELECT {cols} FROM cost_allocations ORDER BY event_id").result_rows
    naive = [[v.replace(tzinfo=None) if isinstance(v, datetime) else v for v in row]
             for row in sorted(decoded, key=lambda r: r[1])]  # fmt: skip
    assert [list(r) for r in stored] == naive
    # the table computed allocation_id (migration 0013); money to the nano-unit
    assert [r[0] for r in stored] == ["e1/b1", "e2/b2", "e3/b1", "e4/b1", "e5/b9"]
    total = client.query("SELECT sum(amount) FROM cost_allocations").result_rows[0][0]
    assert total == sum(Decimal(row[7]) for rows in records for row in rows) / 10**9


def test_a_block_joins_array_offsets_across_records() -> None:
    fmt = batches.COLUMNAR[batches.ALLOCATIONS_V2]
    parts = []
    for i, rows in enumerate([[allocation(1, "a", x="1", y="2")], [allocation(2, "b", z="3")]]):
        n, streams = fmt.split(batches.encode(batches.ALLOCATIONS_V2, rows))
        parts.append((n, streams, i))
    names = [name for name, _ in fmt.columns]
    block = native_block(fmt, names, "t", 0, parts)
    # the tags column's offsets: 2 after the first row, 3 after the second
    head = b"\x04tags\x13Map(String, String)"
    at = block.index(head) + len(head)
    assert array("Q", block[at : at + 16]).tolist() == [2, 3]
