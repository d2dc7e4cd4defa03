"""Every dollar as billed: Anthropic cache lifetimes, batch API results at batch prices,
service tiers at their rates. Payloads are in the providers' own formats; each expected
amount is worked out by hand in a comment (list prices per million tokens)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from spendstream.builders import (
    BuilderError,
    NotBilled,
    build,
    detect,
    from_anthropic_batch_result,
    from_anthropic_message,
    from_gemini_batch_line,
    from_openai_batch_line,
    from_openai_chat,
)
from spendstream.schemas.models import LlmUsage
from spendstream.streams.compiled_pricing import CompiledPricer
from spendstream.streams.pricing import Catalog, Pricer
from spendstream.tracking import track_llm

D = Decimal
PRICER = Pricer()
COMPILED = CompiledPricer()
WHEN = datetime(2026, 11, 15, 12, 0, tzinfo=UTC)


def priced(event):  # type: ignore[no-untyped-def]
    """Pricer's cost, checked against the compiled hot path to the nano-unit."""
    cost = PRICER.price_llm(event.payload, WHEN)
    fast = COMPILED.price_payload(event.payload.model_dump(exclude={"kind"}), WHEN)
    assert fast.to_cost() == cost
    return cost


def lines(cost) -> dict[str, Decimal]:  # type: ignore[no-untyped-def]
    return {c.name: c.amount for c in cost.components}


# --- Anthropic cache lifetimes ------------------------------------------------------------------
# A Messages API response (POST /v1/messages) whose prompt wrote 1,500 tokens to the
# 5-minute cache and 2,500 to the 1-hour cache, and read 10,000 cached tokens.
ANTHROPIC = {
    "id": "msg_01XFDUDYJgAACzvnptvVoYEL", "type": "message", "role": "assistant",
    "model": "claude-sonnet-4-6",
    "content": [{"type": "text", "text": "Hello!"}],
    "stop_reason": "end_turn", "stop_sequence": None,
    "usage": {"input_tokens": 2095, "cache_creation_input_tokens": 4000,
              "cache_read_input_tokens": 10000,
              "cache_creation": {"ephemeral_5m_input_tokens": 1500,
                                 "ephemeral_1h_input_tokens": 2500},
              "output_tokens": 503, "service_tier": "standard"},
}  # fmt: skip


def test_anthropic_1h_cache_writes_bill_at_2x_input_5m_at_1_25x():
    event = from_anthropic_message(ANTHROPIC)
    p = event.payload
    assert (p.input_tokens, p.cache_read_tokens, p.cache_write_tokens) == (16095, 10000, 4000)
    assert p.cache_write_1h_tokens == 2500 and p.service_tier == "standard" and not p.batch
    cost = priced(event)
    # claude-sonnet-4-6: $3 input, $0.30 cache read, $3.75 (1.25x) 5-minute write,
    # $6 (2x) 1-hour write, $15 output.
    # 2095 x 3 = 0.006285; 10000 x 0.30 = 0.003; 1500 x 3.75 = 0.005625;
    # 2500 x 6 = 0.015; 503 x 15 = 0.007545 (all / 1M)
    assert lines(cost) == {"input": D("0.006285"), "cache_read": D("0.003"),
                           "cache_write": D("0.005625"), "cache_write_1h": D("0.015"),
                           "output": D("0.007545")}  # fmt: skip
    assert cost.total == D("0.037455")
    # at the 5-minute rate the 1-hour writes would be 2500 x 3.75 = 0.009375, the call
    # 0.03183: 0.005625 short, 37.5 % of what the 1-hour writes really cost
    assert cost.total - D("0.03183") == D("0.005625") == D("0.375") * D("0.015")


def test_an_older_anthropic_payload_bills_every_cache_write_at_the_5m_rate():
    old = copy.deepcopy(ANTHROPIC)
    del old["usage"]["cache_creation"], old["usage"]["service_tier"]
    event = from_anthropic_message(old)
    assert event.payload.cache_write_1h_tokens == 0 and event.payload.cache_write_tokens == 4000
    cost = priced(event)
    # 4000 x 3.75 / 1M = 0.015; the rest as above: 0.006285 + 0.003 + 0.015 + 0.007545
    assert lines(cost)["cache_write"] == D("0.015") and "cache_write_1h" not in lines(cost)
    assert cost.total == D("0.03183")


def test_anthropic_cache_breakdown_that_does_not_add_up_is_refused():
    bad = copy.deepcopy(ANTHROPIC)
    bad["usage"]["cache_creation"]["ephemeral_1h_input_tokens"] = 2400
    with pytest.raises(BuilderError, match="does not add up"):
        from_anthropic_message(bad)
    only_breakdown = copy.deepcopy(ANTHROPIC)
    del only_breakdown["usage"]["cache_creation_input_tokens"]
    assert from_anthropic_message(only_breakdown).payload.cache_write_tokens == 4000


def test_anthropic_on_bedrock_gets_the_1h_rate_from_the_catalog_where_the_data_lacks_it():
    # genai-prices has no 1-hour write price for this Bedrock model: the catalog's
    # `billing` rule for aws "*anthropic.claude*" says 2x input
    model = "regional.anthropic.claude-3-5-sonnet-20241022-v2:0"
    event = from_anthropic_message(ANTHROPIC, provider="aws", model=model)
    assert event.event_id == "aws:msg_01XFDUDYJgAACzvnptvVoYEL"
    cost = priced(event)
    # $3 input, $0.30 read, $3.75 5-minute write, 2 x $3 = $6 1-hour write, $15 output:
    # the same figures as claude-sonnet-4-6 above
    assert lines(cost)["cache_write_1h"] == D("0.015") and cost.total == D("0.037455")
    assert cost.source == "genai-prices:aws" and cost.flag is None


# --- service tiers ----------------------------------------------------------------------------
def chat(model: str, tier: str | None, prompt: int = 1000, completion: int = 100) -> dict:
    """A Chat Completions response as OpenAI returns it, with its service_tier."""
    return {"id": f"chatcmpl-{tier}", "object": "chat.completion", "created": 1763200000,
            "model": model, "service_tier": tier,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                      "total_tokens": prompt + completion,
                      "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                      "completion_tokens_details": {"reasoning_tokens": 0,
                                                    "audio_tokens": 0}}}  # fmt: skip


@pytest.mark.parametrize(
    ("tier", "total", "source"),
    [
        # gpt-5 standard: 1000 x $1.25 + 100 x $10 = 0.00125 + 0.001
        ("default", D("0.00225"), "genai-prices:openai"),
        (None, D("0.00225"), "genai-prices:openai"),
        # flex: 1000 x $0.625 + 100 x $5 = 0.000625 + 0.0005
        ("flex", D("0.001125"), "genai-prices:openai"),
        # priority: 1000 x $2.50 + 100 x $20 = 0.0025 + 0.002
        ("priority", D("0.0045"), "genai-prices:openai"),
        # scale: no published per-token rates anywhere: standard, and flagged
        ("scale", D("0.00225"), "genai-prices:openai+unknown_tier:scale"),
    ],
)
def test_openai_service_tiers_at_their_rates(tier: str | None, total: Decimal, source: str):
    event = from_openai_chat(chat("gpt-5", tier))
    assert event.payload.service_tier == tier
    cost = priced(event)
    assert (cost.total, cost.source) == (total, source)
    assert (cost.flag is not None) == (tier == "scale")


def test_anthropic_tiers_standard_priority_and_batch():
    standard = priced(from_anthropic_message(ANTHROPIC))
    assert standard.flag is None
    prio = copy.deepcopy(ANTHROPIC)
    prio["usage"]["service_tier"] = "priority"
    cost = priced(from_anthropic_message(prio))
    # no Priority Tier rates in the data or the catalog: standard rates, flagged
    assert cost.total == standard.total and cost.source.endswith("+unknown_tier:priority")
    batch = copy.deepcopy(ANTHROPIC)
    batch["usage"]["service_tier"] = "batch"
    event = from_anthropic_message(batch)
    assert event.payload.batch  # Anthropic says the batch tier served it
    assert priced(event).total == D("0.0187275")  # half of 0.037455


# --- batch API results ------------------------------------------------------------------------
# A line of an OpenAI Batch API output file (GET /v1/files/{output_file_id}/content).
OPENAI_BATCH_LINE = {
    "id": "batch_req_6740a9d8b7e48190a2c7b3c0b9b6b3f1", "custom_id": "request-1",
    "response": {"status_code": 200, "request_id": "c1f9b7a3e1e04b1b9f0c0d2e3f4a5b6c",
                 "body": chat("gpt-4o-mini-2024-07-18", "default", 1200, 300)},
    "error": None,
}  # fmt: skip


def test_openai_batch_output_line_is_priced_at_batch_rates():
    event = build(OPENAI_BATCH_LINE)
    p = event.payload
    assert p.batch and (p.input_tokens, p.output_tokens) == (1200, 300)
    assert event.event_id == "openai:batch_req_6740a9d8b7e48190a2c7b3c0b9b6b3f1"
    cost = priced(event)
    # gpt-4o-mini batch: 1200 x $0.075 + 300 x $0.30 = 0.00009 + 0.00009 (standard: 0.00036)
    assert cost.total == D("0.00018")
    standard = PRICER.price_llm(p.model_copy(update={"batch": False}), WHEN)
    assert standard.total == D("0.00036")


def test_openai_batch_line_of_the_responses_endpoint():
    body = {"id": "resp_67ccd2bed1ec8190b14f964abc054267", "object": "response",
            "created_at": 1763200000, "model": "gpt-5", "status": "completed",
            "service_tier": "default",
            "usage": {"input_tokens": 2000, "input_tokens_details": {"cached_tokens": 0},
                      "output_tokens": 500, "output_tokens_details": {"reasoning_tokens": 200},
                      "total_tokens": 2500}}  # fmt: skip
    line = {"id": "batch_req_2", "custom_id": "r-2",
            "response": {"status_code": 200, "request_id": "req_2", "body": body},
            "error": None}  # fmt: skip
    event = from_openai_batch_line(line)
    assert event.payload.operation == "responses" and event.payload.batch
    # gpt-5 batch: 2000 x $0.625 + 500 x $5 = 0.00125 + 0.0025 (batch wins over the tier)
    assert priced(event).total == D("0.00375")


@pytest.mark.parametrize(
    "line",
    [
        {"id": "batch_req_3", "custom_id": "r-3", "response": None,
         "error": {"code": "batch_expired", "message": "This request could not be executed "
                   "before the completion window expired."}},
        {"id": "batch_req_4", "custom_id": "r-4",
         "response": {"status_code": 400, "request_id": "req_4",
                      "body": {"error": {"message": "Invalid model", "type": "invalid_request_error"}}},
         "error": None},
    ],
)  # fmt: skip
def test_failed_openai_batch_requests_are_not_billed(line: dict):
    with pytest.raises(NotBilled, match="not billed"):
        build(line)


# A line of Anthropic Message Batches results (GET /v1/messages/batches/{id}/results).
def anthropic_result(kind: str = "succeeded") -> dict:
    if kind != "succeeded":
        extra = {"error": {"type": "invalid_request_error", "message": "max_tokens: Field "
                           "required"}} if kind == "errored" else {}  # fmt: skip
        return {"custom_id": "my-second-request", "result": {"type": kind, **extra}}
    message = copy.deepcopy(ANTHROPIC)
    message["usage"]["service_tier"] = "batch"
    return {"custom_id": "my-first-request", "result": {"type": "succeeded", "message": message}}


def test_anthropic_batch_result_is_priced_at_batch_rates_cache_lifetimes_kept():
    event = build(anthropic_result())
    p = event.payload
    assert p.batch and p.cache_write_1h_tokens == 2500
    cost = priced(event)
    # claude-sonnet-4-6 batch (half): $1.50 input, $0.15 read, $1.875 5-minute write,
    # $3 1-hour write, $7.50 output: 0.0031425 + 0.0015 + 0.0028125 + 0.0075 + 0.0037725
    assert lines(cost) == {"input": D("0.0031425"), "cache_read": D("0.0015"),
                           "cache_write": D("0.0028125"), "cache_write_1h": D("0.0075"),
                           "output": D("0.0037725")}  # fmt: skip
    assert cost.total == D("0.0187275")


@pytest.mark.parametrize("kind", ["errored", "canceled", "expired"])
def test_anthropic_batch_results_that_did_not_succeed_are_not_billed(kind: str):
    with pytest.raises(NotBilled, match=kind):
        from_anthropic_batch_result(anthropic_result(kind))
    with pytest.raises(BuilderError, match="unknown result type"):
        from_anthropic_batch_result({"custom_id": "x", "result": {"type": "mystery"}})


# A line of a Gemini API batch output file, and of a Vertex AI batch prediction output.
GEMINI_RESPONSE = {
    "candidates": [{"content": {"parts": [{"text": "..."}], "role": "model"},
                    "finishReason": "STOP", "index": 0}],
    "usageMetadata": {"promptTokenCount": 1000, "candidatesTokenCount": 200,
                      "thoughtsTokenCount": 300, "totalTokenCount": 1500},
    "modelVersion": "gemini-2.5-flash", "responseId": "mKd6aOWnDr2m1MkP8ZqS0Ac",
}  # fmt: skip
GEMINI_LINE = {"key": "request-1", "response": GEMINI_RESPONSE}
VERTEX_LINE = {"status": "", "processed_time": "2025-10-01T10:00:00.000+00:00",
               "request": {"contents": [{"parts": [{"text": "Hi"}], "role": "user"}]},
               "response": {**GEMINI_RESPONSE, "responseId": "vtx-1"}}  # fmt: skip


@pytest.mark.parametrize("line", [GEMINI_LINE, VERTEX_LINE])
def test_gemini_batch_lines_are_priced_at_batch_rates(line: dict):
    event = build(line)
    assert event.payload.batch and event.payload.output_tokens == 500
    # gemini-2.5-flash batch: 1000 x $0.15 + (200 + 300 thinking) x $1.25
    # = 0.00015 + 0.000625 (standard 0.0003 + 0.00125)
    assert priced(event).total == D("0.000775")


@pytest.mark.parametrize(
    "line",
    [
        {"key": "request-2", "error": {"code": 400, "message": "Invalid argument"}},
        {"key": "request-3", "status": {"code": 3, "message": "Invalid argument"}},
        {**VERTEX_LINE, "status": "Bad Request: content is empty", "response": None},
    ],
)
def test_failed_gemini_batch_lines_are_not_billed(line: dict):
    with pytest.raises(NotBilled):
        from_gemini_batch_line(line)


def test_batch_lines_are_detected_by_shape():
    assert detect(OPENAI_BATCH_LINE) == "openai-batch"
    assert detect(anthropic_result()) == "anthropic-batch"
    assert detect(GEMINI_LINE) == detect(VERTEX_LINE) == "gemini-batch"
    assert build(GEMINI_LINE, "gemini-batch").payload.batch


# --- catalog: batch rates where the data has none ------------------------------------------
def test_batch_without_data_uses_the_catalog_rule_and_without_either_is_flagged():
    # genai-prices has no batch variant for this Bedrock model: the aws rule says 0.5x
    usage = LlmUsage(provider="aws", model="regional.anthropic.claude-3-5-sonnet-20241022-v2:0",
                     input_tokens=10_000, output_tokens=1_000, batch=True)  # fmt: skip
    # standard: 10000 x $3 + 1000 x $15 = 0.03 + 0.015 = 0.045; batch: 0.0225
    cost = PRICER.price_llm(usage, WHEN)
    assert cost.total == D("0.0225") and cost.flag is None
    bare = Pricer(Catalog(version="no-rules"))
    flagged = bare.price_llm(usage, WHEN)
    assert flagged.total == D("0.045") and flagged.source == "genai-prices:aws+no_batch_rate"


def test_tracking_publishes_batch_lines_and_skips_unbilled_ones():
    published = []

    class Sink:
        def publish(self, event):  # type: ignore[no-untyped-def]
            published.append(event)

    tracker = track_llm(Sink(), attributes={"team": "ml"})
    assert tracker.record(OPENAI_BATCH_LINE) is not None
    assert tracker.record(anthropic_result("expired")) is None
    assert tracker.record({"unknown": 1}) is None
    assert [e.payload.batch for e in published] == [True]
    assert published[0].attributes.team == "ml"
    assert (tracker.tracked, tracker.not_billed, tracker.failed) == (1, 1, 1)


def test_before_the_data_models_batch_prices_the_catalog_rule_applies_compiled_too():
    # genai-prices models OpenAI batch prices from 2026-10-14 on; a batch call of 2025
    # is priced by the catalog's openai rule (0.5x): the same 0.00018 as above
    usage = LlmUsage(provider="openai", model="gpt-4o-mini", input_tokens=1200,
                     output_tokens=300, batch=True)  # fmt: skip
    for when in (datetime(2025, 11, 15, tzinfo=UTC), WHEN):
        cost = PRICER.price_llm(usage, when)
        assert cost.total == D("0.00018") and cost.flag is None
        fast = COMPILED.price_payload(usage.model_dump(exclude={"kind"}), when)
        assert fast.to_cost() == cost and fast.fallback is None


def test_the_readme_catalog_example_prices_negotiated_tiers():
    import re
    from pathlib import Path

    import yaml

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    (block,) = [b for b in re.findall(r"```yaml\n(.*?)```", readme, flags=re.S) if "billing:" in b]
    catalog = Catalog.load().merged(Catalog._parse(yaml.safe_load(block)))
    pricer = Pricer(catalog)
    prio = copy.deepcopy(ANTHROPIC)
    prio["usage"]["service_tier"] = "priority"
    cost = pricer.price_llm(from_anthropic_message(prio).payload, WHEN)
    # 1.25 x the standard 0.037455 = 0.04681875, not flagged
    assert cost.total == D("0.04681875") and cost.flag is None
    scale = pricer.price_llm(from_openai_chat(chat("gpt-5", "scale")).payload, WHEN)
    # explicit: 1000 x $1.10 + 100 x $9 = 0.0011 + 0.0009
    assert scale.total == D("0.002") and scale.source == "genai-prices:openai"
    # the bundled rules still apply below the user's: batch on Anthropic is half
    batch = pricer.price_llm(from_anthropic_batch_result(anthropic_result()).payload, WHEN)
    assert batch.total == D("0.0187275")
