"""Schemas evolve backward-compatibly: records written with old versions still decode."""

from __future__ import annotations

import copy
import io

import fastavro
import pytest

from spendstream.schemas.avro import (
    SINGLE_OBJECT_MAGIC,
    IncompatibleSchema,
    check_backward_compatible,
    codec,
    fingerprint,
    history_versions,
    load,
)
from spendstream.schemas.budget import BudgetDefinition
from spendstream.schemas.models import UsageEvent
from tests.conftest import llm_event

SCHEMAS = [
    "UsageEvent", "PricedUsage", "CostAllocation", "BudgetDefinition", "BudgetAlert",
    "BudgetStatus", "DeadLetter",
]  # fmt: skip


def v1_bytes(event: UsageEvent) -> bytes:
    """Encode as a v1 producer would have: v1 schema, v1 fingerprint, no producer field."""
    v1 = history_versions("UsageEvent")[0]
    parsed = fastavro.parse_schema(v1)
    record = event.to_avro()
    record.pop("producer")
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, parsed, record)
    return SINGLE_OBJECT_MAGIC + fingerprint(parsed) + buf.getvalue()


def test_records_written_with_v1_still_decode():
    event = llm_event(org="acme", team="ml")
    data = v1_bytes(event)
    assert data[2:10] != codec("UsageEvent").header[2:]  # really the old fingerprint
    decoded = UsageEvent.decode(data)
    assert decoded == event and decoded.producer is None


def v2_bytes(event: UsageEvent) -> bytes:
    """Encode as a v2 producer would have: LlmUsage without the 1-hour cache writes,
    service tier and batch flag (schemas/history/*.v2.avsc)."""
    v2 = history_versions("UsageEvent")[1]
    parsed = fastavro.parse_schema(v2)
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, parsed, event.to_avro())
    return SINGLE_OBJECT_MAGIC + fingerprint(parsed) + buf.getvalue()


def test_v2_llm_records_decode_with_standard_billing_defaults():
    event = llm_event(provider="anthropic", model="claude-haiku-4-5", input_tokens=1000,
                      cache_write_tokens=400)  # fmt: skip
    data = v2_bytes(event)
    assert data[2:10] != codec("UsageEvent").header[2:]  # the v2 fingerprint, not v3
    decoded = UsageEvent.decode(data)
    # an old producer's cache writes all count as 5-minute writes; not batch, no tier
    assert decoded == event
    assert decoded.payload.cache_write_tokens == 400
    assert decoded.payload.cache_write_1h_tokens == 0
    assert decoded.payload.service_tier is None and decoded.payload.batch is False


def test_v3_round_trip_keeps_the_billing_fields():
    payload = llm_event().payload.model_copy(
        update={
            "cache_write_tokens": 300,
            "cache_write_1h_tokens": 200,
            "service_tier": "flex",
            "batch": True,
        }  # fmt: skip
    )
    event = llm_event().model_copy(update={"payload": payload})
    back = UsageEvent.decode(event.encode()).payload
    assert (back.cache_write_1h_tokens, back.service_tier, back.batch) == (200, "flex", True)


def test_v2_round_trip_keeps_the_new_field():
    event = llm_event().model_copy(update={"producer": "billing-tracker/1.4"})
    assert UsageEvent.decode(event.encode()).producer == "billing-tracker/1.4"


def test_budget_definitions_written_with_v1_still_decode_without_actor_or_note():
    """A budget on the compacted topic since before v2 (actor, note) stays readable."""
    (v1,) = history_versions("BudgetDefinition")
    parsed = fastavro.parse_schema(v1)
    budget = BudgetDefinition(budget_id="acme", name="Acme", limit="100.5", scope={"org": "acme"})
    record = budget.to_avro()
    assert record.pop("actor") is None and record.pop("note") is None
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, parsed, record)
    data = SINGLE_OBJECT_MAGIC + fingerprint(parsed) + buf.getvalue()
    assert data[2:10] != codec("BudgetDefinition").header[2:]  # really the old fingerprint
    decoded = BudgetDefinition.decode(data)
    assert decoded == budget and decoded.actor is None and decoded.note is None


def test_budget_definition_v2_round_trip_keeps_actor_and_note():
    budget = BudgetDefinition(budget_id="acme", name="Acme", limit="1", actor="ana", note="Q4")
    decoded = BudgetDefinition.decode(budget.encode())
    assert (decoded.actor, decoded.note) == ("ana", "Q4")


@pytest.mark.parametrize("name", ["UsageEvent", "PricedUsage", "BudgetDefinition"])
def test_every_archived_version_is_readable_by_the_current_schema(name):
    versions = history_versions(name)
    assert versions, "history must keep the previous versions"
    for old in versions:
        check_backward_compatible(old, load(name))


@pytest.mark.parametrize("name", SCHEMAS)
def test_current_schemas_are_self_compatible(name):
    check_backward_compatible(load(name), load(name), samples=50)


def _expanded_current() -> dict:
    return copy.deepcopy(history_versions("UsageEvent")[0])


def test_a_new_field_without_default_is_caught():
    reader = _expanded_current()
    reader["fields"].append({"name": "cost_center", "type": "string"})
    with pytest.raises(IncompatibleSchema, match="cost_center"):
        check_backward_compatible(history_versions("UsageEvent")[0], reader)


def test_a_type_change_is_caught():
    reader = _expanded_current()
    for field in reader["fields"]:
        if field["name"] == "event_id":
            field["type"] = "long"
    with pytest.raises(IncompatibleSchema):
        check_backward_compatible(history_versions("UsageEvent")[0], reader)


def test_unknown_future_writer_is_rejected_with_reason():
    reader = codec("UsageEvent")
    data = SINGLE_OBJECT_MAGIC + b"\x99" * 8 + b"\x00"
    with pytest.raises(ValueError, match="unknown schema fingerprint"):
        reader.decode(data)
    assert len(reader.known_fingerprints) == 3  # v1, v2 and v3
