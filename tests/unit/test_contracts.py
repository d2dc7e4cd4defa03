import struct
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from pydantic import ValidationError

from spendstream.schemas.avro import AvroCodec, AvroDecodeError, codec
from spendstream.schemas.budget import BudgetDefinition, BudgetError, validate_hierarchy
from spendstream.schemas.models import CustomCost, LlmUsage, UsageEvent, explain
from spendstream.schemas.money import MoneyError, from_nanos, money, to_nanos
from tests.conftest import llm_event


def test_single_object_encoding_header_and_round_trip():
    event = llm_event(org="acme", team="ml")
    data = event.encode()
    assert data[:2] == b"\xc3\x01"
    assert data[2:10] == codec("UsageEvent").header[2:]
    assert UsageEvent.decode(data) == event


def test_confluent_framing_decodes_with_a_registry_and_is_refused_without():
    event = llm_event()
    writer = AvroCodec("UsageEvent", confluent_schema_id=42)
    data = writer.encode(event.to_avro())
    assert data[:5] == b"\x00" + struct.pack(">I", 42)
    with pytest.raises(AvroDecodeError, match="no schema registry"):
        codec("UsageEvent").decode(data)
    schema = codec("UsageEvent").schema
    reader = AvroCodec("UsageEvent", registry_lookup=lambda sid: schema)
    assert UsageEvent.from_avro(reader.decode(data)) == event


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"\xc3\x01\x00", "truncated header"),
        (b"\xc3\x01" + b"\x00" * 8 + b"abc", "unknown schema fingerprint"),
        (b"hello world", "not Avro"),
    ],
)
def test_bad_bytes_are_rejected_with_a_reason(data, reason):
    with pytest.raises(AvroDecodeError, match=reason):
        codec("UsageEvent").decode(data)


def test_truncated_body_is_rejected():
    data = llm_event().encode()
    with pytest.raises(AvroDecodeError, match="corrupt or truncated"):
        codec("UsageEvent").decode(data[:-7])
    with pytest.raises(AvroDecodeError, match="trailing"):
        codec("UsageEvent").decode(data + b"\x00")


def test_validation_reasons_name_the_field():
    with pytest.raises(ValidationError) as info:
        LlmUsage(provider="openai", model="gpt-4o", input_tokens=-1)
    assert "input_tokens" in explain(info.value)
    with pytest.raises(ValidationError, match="exceed input_tokens"):
        LlmUsage(provider="openai", model="m", input_tokens=10, cache_read_tokens=11)
    with pytest.raises(ValidationError, match="ISO 4217"):
        CustomCost(amount=Decimal(1), currency="dollars")
    with pytest.raises(ValidationError, match="time zone"):
        UsageEvent(event_id="x", occurred_at=datetime(2026, 1, 1), source="llm",
                   payload=LlmUsage(provider="p", model="m"))  # fmt: skip
    with pytest.raises(ValidationError, match="payload is a llm"):
        UsageEvent(event_id="x", occurred_at=datetime.now(UTC), source="apify",
                   payload=LlmUsage(provider="p", model="m"))  # fmt: skip


def test_future_events_beyond_skew_are_rejected():
    now = datetime(2026, 11, 24, tzinfo=UTC)
    llm_event(when=now + timedelta(minutes=4)).check_clock(now)
    with pytest.raises(ValueError, match="in the future"):
        llm_event(when=now + timedelta(minutes=6)).check_clock(now)


def test_money_is_exact_and_refuses_floats():
    assert money("0.0000000015") == Decimal("0.000000002")  # half-even at nano-units
    assert money("0.0000000025") == Decimal("0.000000002")
    assert to_nanos(Decimal("1.000000001")) == 1_000_000_001
    assert from_nanos(1) == Decimal("0.000000001")
    with pytest.raises(MoneyError):
        money(0.1)  # type: ignore[arg-type]
    with pytest.raises(MoneyError):
        to_nanos(Decimal("0.0000000001"))


def test_budget_validation_messages():
    with pytest.raises(ValidationError, match="IANA time zone"):
        BudgetDefinition(budget_id="b", name="b", limit="1", timezone="Mars/Olympus")
    with pytest.raises(ValidationError, match="ascending"):
        BudgetDefinition(budget_id="b", name="b", limit="1",
                         thresholds=[{"percent": 90}, {"percent": 50}])  # fmt: skip
    with pytest.raises(ValidationError, match="downgrade_to"):
        BudgetDefinition(budget_id="b", name="b", limit="1",
                         thresholds=[{"percent": 90, "action": "downgrade"}])  # fmt: skip
    with pytest.raises(ValidationError, match="allocations sum"):
        BudgetDefinition(budget_id="b", name="b", limit="10",
                         allocations={"llm": "6", "apify": "5"})  # fmt: skip
    parent = BudgetDefinition(budget_id="p", name="p", limit="10")
    child = BudgetDefinition(budget_id="c", name="c", parent_id="p", limit="11")
    with pytest.raises(BudgetError, match="exceeds its parent"):
        validate_hierarchy({"p": parent, "c": child})
    orphan = BudgetDefinition(budget_id="o", name="o", parent_id="nope", limit="1")
    with pytest.raises(BudgetError, match="unknown"):
        validate_hierarchy({"o": orphan})


def test_budget_round_trips_through_avro():
    b = BudgetDefinition(budget_id="b", name="b", limit="12.5", timezone="Europe/Berlin",
                         scope={"team": "ml"}, thresholds=[{"percent": 80, "action": "block"}])  # fmt: skip
    assert BudgetDefinition.decode(b.encode()) == b
    assert b.scope == {"team": ["ml"]}


def test_a_trusted_status_equals_the_validated_one():
    """The budget feed reads every status without a second validation: same model."""
    from datetime import UTC, datetime
    from decimal import Decimal

    from spendstream.schemas.avro import codec
    from spendstream.schemas.models import BudgetStatus

    status = BudgetStatus(
        budget_id="b", budget_name="B", period_key="2026-11",
        period_start=datetime(2026, 11, 1, tzinfo=UTC), period_end=datetime(2026, 12, 1, tzinfo=UTC),
        spent=Decimal("1.5"), limit=Decimal(10), currency="USD", event_count=3, state="normal",
        updated_at=datetime(2026, 11, 20, tzinfo=UTC), projected_total=Decimal(3),
        active_alerts=["b:2026-11:threshold:50"],
    )  # fmt: skip
    record = codec("BudgetStatus").decode(codec("BudgetStatus").encode(status.to_avro()))
    trusted = BudgetStatus.from_trusted_avro(record)
    assert trusted == BudgetStatus.from_avro(record) == status
    assert trusted.percent == Decimal("15.00") and trusted.remaining == Decimal("8.5")
