"""The byte-level Avro the sink hands ClickHouse: checked by reading it back with fastavro."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import fastavro
import pytest
from hypothesis import given
from hypothesis import strategies as st

from spendstream.schemas.avro import AvroDecodeError, codec
from spendstream.schemas.models import Attributes, CostAllocation, SourcePosition
from spendstream.sinks.native_ingest import NativeBatch, avro_long, container, position_prefix


@given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
def test_avro_long_is_avros_zigzag_varint(n: int) -> None:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, {"type": "long"}, n)
    assert avro_long(n) == buf.getvalue()


def allocation(i: int) -> CostAllocation:
    start = datetime(2026, 11, 1, tzinfo=UTC)
    return CostAllocation(
        allocation_id=f"e{i}/b", event_id=f"e{i}", budget_id="b", matched_via="b",
        period_key="2026-11", period_start=start, period_end=start + timedelta(days=30),
        occurred_at=start + timedelta(seconds=i), amount=Decimal("0.000000001") * (i + 1),
        currency="USD", source="llm", provider=None if i % 2 else "openai", model="m",
        attributes=Attributes(team="t", tags={"i": str(i)}),
        origin=SourcePosition(topic="usage.llm", partition=1, offset=i),
    )  # fmt: skip


def test_container_reads_back_as_the_records_with_their_kafka_positions() -> None:
    c = codec("CostAllocation")
    batch = NativeBatch(c, position_prefix("cost-allocations", 3))
    values = [c.encode(allocation(i).to_avro()) for i in range(5)]
    for index, value in enumerate(values):
        batch.add(value, 1000 + index, index)
    [(writer, bodies, _)] = batch.groups.values()
    read = list(fastavro.reader(io.BytesIO(container(writer, bodies))))
    assert [r["_offset"] for r in read] == [1000, 1001, 1002, 1003, 1004]
    assert {(r["_topic"], r["_partition"]) for r in read} == {("cost-allocations", 3)}
    assert [r["value"] for r in read] == [c.decode(v) for v in values]
    assert batch.indices[id(writer)] == [0, 1, 2, 3, 4]


def test_records_of_an_older_schema_version_get_their_own_container() -> None:
    c = codec("CostAllocation")
    batch = NativeBatch(c, position_prefix("t", 0))
    batch.add(c.encode(allocation(0).to_avro()), 0, 0)
    other = {**c.schema, "name": "dev.spendstream.Other"}  # any second writer schema
    c._writers[b"\x00" * 8] = other
    try:
        batch.add(c.header[:2] + b"\x00" * 8 + b"body", 1, 1)
    finally:
        del c._writers[b"\x00" * 8]
    assert len(batch.groups) == 2
    assert sorted(map(len, batch.indices.values())) == [1, 1]


@pytest.mark.parametrize(
    "value, reason",
    [
        (b"", "empty"),
        (b"\xc3\x01\x01\x02", "truncated header"),
        (b"\xc3\x01" + b"\xff" * 8 + b"x", "unknown schema fingerprint"),
        (b"{json}", "not Avro"),
    ],
)
def test_framing_that_is_not_ours_is_refused_before_clickhouse(value: bytes, reason: str) -> None:
    batch = NativeBatch(codec("CostAllocation"), position_prefix("t", 0))
    with pytest.raises(AvroDecodeError, match=reason):
        batch.add(value, 0, 0)
    assert batch.groups == {}
