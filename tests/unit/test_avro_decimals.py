"""Decimals the codec writes itself (schemas/avro.py ``decimal_bytes``): every record type
with a decimal reads back equal to what fastavro writes from the Decimal, to the last digit,
and a value with more digits than its scale is refused, never rounded."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from decimal import Decimal

import fastavro
import pytest
from hypothesis import given
from hypothesis import strategies as st

from spendstream.schemas.avro import DecimalField, codec, decimal_bytes, decimal_fields
from spendstream.schemas.budget import BudgetDefinition
from spendstream.schemas.models import BudgetStatus, to_micros
from spendstream.streams.aggregation import PeriodState, status_of, status_record

NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)
START, END = datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)
MAX_UNSCALED = 10**38 - 1


def fastavro_decimal(value: Decimal, scale: int) -> bytes:
    """fastavro's own encoding of a bytes decimal (the reference)."""
    schema = {"type": "bytes", "logicalType": "decimal", "precision": 38, "scale": scale}
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), value)
    return buf.getvalue()


def read_decimal(data: bytes, scale: int) -> Decimal:
    schema = {"type": "bytes", "logicalType": "decimal", "precision": 38, "scale": scale}
    return fastavro.schemaless_reader(io.BytesIO(data), fastavro.parse_schema(schema), None)


@given(st.integers(-MAX_UNSCALED, MAX_UNSCALED), st.sampled_from([0, 4, 9]))
def test_decimal_bytes_reads_back_as_fastavro_writes_it(unscaled: int, scale: int):
    value = Decimal(unscaled).scaleb(-scale)
    ours = decimal_bytes(value, scale)
    # ours is the Avro body; fastavro's has a length prefix: compare what both read back as
    assert read_decimal(fastavro_decimal(value, scale), scale) == value
    encoded = io.BytesIO()
    fastavro.schemaless_writer(encoded, fastavro.parse_schema({"type": "bytes"}), ours)
    assert read_decimal(encoded.getvalue(), scale) == value


def test_more_digits_than_the_scale_is_refused_not_rounded():
    with pytest.raises(ValueError, match="more than 9 fractional digits"):
        decimal_bytes(Decimal("0.0000000001"), 9)
    assert decimal_bytes(Decimal("1.5000000000"), 9) == decimal_bytes(Decimal("1.5"), 9)


def test_the_decimal_fields_of_a_status_are_found_with_their_scales():
    found = decimal_fields(codec("BudgetStatus").schema)
    assert found["spent"] == DecimalField(9)
    assert found["days_left"] == DecimalField(4, in_union=True)
    assert found["projected_total"] == DecimalField(9, in_union=True)
    assert found["held_amounts"] == DecimalField(9, in_map=True)
    assert "event_count" not in found and "period_start" not in found


def test_a_union_with_two_bytes_branches_is_left_to_fastavro():
    """Written as bytes, a decimal would take the plain ``bytes`` branch, not its own."""
    schema = fastavro.parse_schema({"type": "record", "name": "R", "fields": [
        {"name": "a", "type": ["null", "bytes", {"type": "bytes", "logicalType": "decimal",
                                                  "precision": 9, "scale": 2}]}]})  # fmt: skip
    assert "a" not in decimal_fields(schema)
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, {"a": Decimal("1.25")})
    assert buf.getvalue()[0] == 4  # branch 2 (zigzag): the decimal


@given(
    spent=st.integers(0, 10**15),
    percent=st.one_of(st.none(), st.integers(1, 10_000)),
    projected=st.one_of(st.none(), st.integers(0, 10**15)),
)
def test_records_with_nullable_decimals_encode_byte_for_byte_as_fastavro(spent, percent,
                                                                         projected):  # fmt: skip
    """The union branch named by the codec is the one fastavro finds by trying them."""
    c = codec("BudgetAlert")
    record = {
        "alert_id": "b:2026-11:threshold:50", "budget_id": "b", "budget_name": "B",
        "period_key": "2026-11", "kind": "threshold",
        "threshold_percent": None if percent is None else Decimal(percent).scaleb(-2),
        "action": "notify", "downgrade_to": None, "severity": "warning",
        "spent": Decimal(spent).scaleb(-9), "limit": Decimal("1234.5"), "currency": "USD",
        "message": "m", "triggered_by": None, "triggered_at": NOW,
        "projected_total": None if projected is None else Decimal(projected).scaleb(-9),
    }  # fmt: skip
    buf = io.BytesIO()
    buf.write(c.header)
    fastavro.schemaless_writer(buf, c.schema, record)
    assert c.encode(record) == buf.getvalue()


@given(
    spent=st.integers(0, 10**15),
    held=st.dictionaries(st.sampled_from(["EUR", "GBP", "JPY"]), st.integers(1, 10**12)),
    days=st.integers(0, 29),
)
def test_a_status_record_encodes_to_the_model_it_describes(spent, held, days):
    budget = BudgetDefinition(budget_id="b", name="B", limit="1234.5")
    state = PeriodState(spent_nanos=spent, count=3, period_start_us=to_micros(START),
                        period_end_us=to_micros(END),
                        last_event_us=to_micros(START) + days * 86_400_000_000 + 1,
                        first_event_us=to_micros(START),
                        daily={days: spent}, alerted=["50"],
                        held=[["e", n, c, to_micros(START)] for c, n in held.items()])  # fmt: skip
    c = codec("BudgetStatus")
    model = status_of(budget, "2026-11", state, NOW)
    record = status_record(budget, "2026-11", state, NOW)
    fast = c.decode(c.encode(record))
    # the reference: fastavro writing every Decimal itself
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, c.schema, model.to_avro())
    slow = fastavro.schemaless_reader(io.BytesIO(buf.getvalue()), c.schema, None)
    assert fast == slow
    assert BudgetStatus.from_avro(fast) == model
    assert fast["spent"] == Decimal(spent).scaleb(-9)
