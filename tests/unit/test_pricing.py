"""Pricing is exact: hand-checked costs, Decimal all the way, breakdowns add up."""

from decimal import Decimal

import pytest

from spendstream.schemas.models import ApifyRun, CustomCost, UsageEvent, WorkflowRun
from spendstream.streams.pricing import Catalog, Pricer, PricingError
from tests.conftest import llm_event

D = Decimal


@pytest.fixture(scope="module")
def pricer() -> Pricer:
    return Pricer()


def test_openai_cached_tokens_are_billed_once_at_cache_rate(pricer):
    # gpt-4o: $2.50/M input, $1.25/M cached input, $10/M output.
    # 1,000 prompt tokens of which 200 cached: 800*2.5e-6 + 200*1.25e-6 + 500*10e-6
    cost = pricer.price(llm_event(input_tokens=1000, cache_read_tokens=200, output_tokens=500))
    assert cost.total == D("0.007250000")
    assert cost.currency == "USD"
    assert cost.source == "genai-prices:openai"
    assert cost.version.startswith("genai-prices ")
    parts = {c.name: c.amount for c in cost.components}
    assert parts["input"] == D("0.002") and parts["cache_read"] == D("0.00025")


def test_anthropic_cache_write_and_read_priced_separately(pricer):
    # claude-sonnet-4-5: $3/M input, $0.30/M cache read, $3.75/M cache write, $15/M output.
    event = llm_event(provider="anthropic", model="claude-sonnet-4-5", input_tokens=1000,
                      cache_read_tokens=200, cache_write_tokens=100, output_tokens=500)  # fmt: skip
    cost = pricer.price(event)
    assert cost.total == D("0.002100") + D("0.000060") + D("0.000375") + D("0.0075")


def test_breakdown_sums_exactly_to_total(pricer):
    cost = pricer.price(llm_event(input_tokens=123_457, cache_read_tokens=3_333, output_tokens=77))
    assert sum(c.amount for c in cost.components) == cost.total
    assert all(c.amount.as_tuple().exponent == -9 for c in cost.components)


def test_override_catalog_wins_over_library():
    catalog = Catalog._parse({"version": "t1", "llm": [
        {"provider": "openai", "model": "gpt-4o", "input_mtok": "1", "output_mtok": "2"}]})  # fmt: skip
    cost = Pricer(catalog).price(llm_event(input_tokens=1_000_000, output_tokens=1_000_000))
    assert cost.total == D(3)
    assert cost.version == "catalog t1"


def test_catalog_refuses_float_prices():
    with pytest.raises(ValueError, match="quoted"):
        Catalog._parse({"version": "x", "llm": [
            {"provider": "a", "model": "b", "input_mtok": 0.1}]})  # fmt: skip


def test_unknown_model_is_an_error_not_zero(pricer):
    with pytest.raises(PricingError) as info:
        pricer.price(llm_event(model="no-such-model-9000"))
    assert info.value.code == "unknown_model"
    assert "no-such-model-9000" in str(info.value)


def test_apify_reported_usage_is_authoritative(pricer):
    run = ApifyRun(actor_id="a/b", run_id="r1", usage_total_usd=D("0.123"),
                   usage_usd={"ACTOR_COMPUTE_UNITS": D("0.1"), "PROXY": D("0.023")})  # fmt: skip
    event = UsageEvent(event_id="a1", occurred_at="2026-11-01T00:00:00Z", source="apify",
                       payload=run)  # fmt: skip
    cost = pricer.price(event)
    assert cost.total == D("0.123") and len(cost.components) == 2


def test_apify_compute_units_priced_from_catalog_plan(pricer):
    run = ApifyRun(actor_id="a/b", run_id="r1", compute_units=D("2.5"), plan="scale")
    event = UsageEvent(event_id="a1", occurred_at="2026-11-01T00:00:00Z", source="apify",
                       payload=run)  # fmt: skip
    assert pricer.price(event).total == D("0.75")  # 2.5 CU x $0.30


def test_workflow_and_custom(pricer):
    wf = UsageEvent(event_id="w", occurred_at="2026-11-01T00:00:00Z", source="workflow",
                    payload=WorkflowRun(platform="zapier", workflow_id="z", execution_id="x",
                                        tasks=3))  # fmt: skip
    assert pricer.price(wf).total == D("0.0597")
    custom = UsageEvent(event_id="c", occurred_at="2026-11-01T00:00:00Z", source="custom",
                        payload=CustomCost(amount=D("12.5"), currency="eur"))  # fmt: skip
    cost = pricer.price(custom)
    assert (cost.total, cost.currency) == (D("12.5"), "EUR")


def test_user_catalog_layers_over_the_bundled_one(tmp_path):
    mine = tmp_path / "prices.yaml"
    mine.write_text(
        'version: "acme-2026-q4"\n'
        "llm:\n"
        '  - {provider: openai, model: gpt-4o, input_mtok: "2.00", output_mtok: "8.00"}\n'
        "workflow:\n"
        '  zapier: {enterprise: {per_task: "0.0050"}}\n'
    )
    catalog = Catalog.for_settings(mine)
    assert catalog.version.endswith("+acme-2026-q4")
    pricer = Pricer(catalog)
    cost = pricer.price(llm_event(input_tokens=1_000_000, output_tokens=1_000_000))
    assert cost.total == D(10) and cost.version == f"catalog {catalog.version}"
    # bundled entries that were not overridden remain
    assert catalog.workflow["zapier"]["default"]["per_task"] == D("0.0199")
    assert catalog.workflow["zapier"]["enterprise"]["per_task"] == D("0.0050")
    assert ("openai", "dall-e-3") in catalog.llm


def test_bad_catalog_file_is_reported(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("version: x\nllm:\n  - {provider: a}\n")
    with pytest.raises(PricingError, match="invalid price catalog"):
        Catalog.for_settings(bad)
    with pytest.raises(PricingError, match="cannot read"):
        Catalog.for_settings(tmp_path / "missing.yaml")
