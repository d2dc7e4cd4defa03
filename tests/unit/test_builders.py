"""Builders turn real provider payloads into events whose cost is exact (hand-checked)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from spendstream.builders import (
    BuilderError,
    build,
    detect,
    from_anthropic_message,
    from_apify_run,
    from_gemini,
    from_make_execution,
    from_n8n_execution,
    from_openai_chat,
    from_openai_compatible,
    from_openai_embedding,
    from_openai_image,
    from_openai_responses,
    from_power_automate_run,
    from_zapier_task_usage,
)
from spendstream.streams.pricing import Pricer

D = Decimal
PRICER = Pricer()


def cost(event) -> Decimal:  # type: ignore[no-untyped-def]
    return PRICER.price(event).total


OPENAI_CHAT = {
    "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG", "object": "chat.completion",
    "created": 1741570283, "model": "gpt-4o-2024-08-06",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "..."},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1117, "completion_tokens": 46, "total_tokens": 1163,
              "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
              "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0}},
}  # fmt: skip


def test_openai_chat_cached_tokens_are_inside_prompt_tokens():
    event = from_openai_chat(OPENAI_CHAT, attributes={"team": "ml"})
    p = event.payload
    assert (p.input_tokens, p.cache_read_tokens, p.output_tokens) == (1117, 1024, 46)
    assert event.event_id == "openai:chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG"
    assert event.occurred_at == datetime.fromtimestamp(1741570283, UTC)
    assert event.attributes.team == "ml"
    # gpt-4o: 93 uncached x $2.50/M + 1024 cached x $1.25/M + 46 x $10/M
    assert cost(event) == D("0.0002325") + D("0.00128") + D("0.00046")


def test_openai_reasoning_tokens_are_part_of_output():
    resp = {"id": "c2", "model": "o3-mini", "created": 1741570283, "object": "chat.completion",
            "usage": {"prompt_tokens": 2000, "completion_tokens": 900,
                      "prompt_tokens_details": {"cached_tokens": 1024},
                      "completion_tokens_details": {"reasoning_tokens": 640}}}  # fmt: skip
    event = from_openai_chat(resp)
    assert (event.payload.output_tokens, event.payload.reasoning_tokens) == (900, 640)
    # o3-mini: 976 x $1.10/M + 1024 x $0.55/M + 900 x $4.40/M (reasoning billed as output once)
    assert cost(event) == D("0.0010736") + D("0.0005632") + D("0.00396")


def test_openai_responses_api():
    resp = {"id": "resp_67cb", "object": "response", "created_at": 1741476542,
            "model": "gpt-4o-mini",
            "usage": {"input_tokens": 36, "input_tokens_details": {"cached_tokens": 0},
                      "output_tokens": 87, "output_tokens_details": {"reasoning_tokens": 0},
                      "total_tokens": 123}}  # fmt: skip
    event = from_openai_responses(resp)
    assert event.payload.operation == "responses" and event.event_id == "openai:resp_67cb"
    # gpt-4o-mini: 36 x $0.15/M + 87 x $0.60/M
    assert cost(event) == D("0.0000054") + D("0.0000522")


def test_openai_compatible_providers():
    resp = {"id": "cmpl-1", "object": "chat.completion", "model": "mistral-large-latest",
            "created": 1741476542, "usage": {"prompt_tokens": 1000, "completion_tokens": 200}}  # fmt: skip
    event = from_openai_compatible(resp, "mistral")
    assert event.payload.provider == "mistral" and event.event_id == "mistral:cmpl-1"
    assert cost(event) == D("0.0032")  # $2/M in, $6/M out
    groq = from_openai_compatible({**resp, "model": "llama-3.3-70b-versatile"}, "groq")
    assert cost(groq) == D("0.000748")  # $0.59/M in, $0.79/M out


def test_embeddings_and_images():
    emb = from_openai_embedding({"object": "list", "model": "text-embedding-3-small",
                                 "data": [{"embedding": [0.1]}],
                                 "usage": {"prompt_tokens": 5000, "total_tokens": 5000}})  # fmt: skip
    assert emb.payload.operation == "embedding" and cost(emb) == D("0.0001")  # $0.02/M
    img = from_openai_image({"created": 1741476542, "data": [{"url": "a"}, {"url": "b"}]},
                            "dall-e-3", size="1024x1024")  # fmt: skip
    assert img.payload.images == 2 and cost(img) == D("0.08")  # catalog: $0.040 per image


ANTHROPIC = {
    "id": "msg_01XFDUDYJgAACzvnptvVoYEL", "type": "message", "role": "assistant",
    "model": "claude-sonnet-4-5", "content": [{"type": "text", "text": "..."}],
    "stop_reason": "end_turn",
    "usage": {"input_tokens": 50, "cache_creation_input_tokens": 2000,
              "cache_read_input_tokens": 10000, "output_tokens": 503},
}  # fmt: skip


def test_anthropic_input_tokens_exclude_cache_so_they_are_added_back():
    event = from_anthropic_message(ANTHROPIC)
    p = event.payload
    assert (p.input_tokens, p.cache_read_tokens, p.cache_write_tokens) == (12050, 10000, 2000)
    # sonnet 4.5: 50 x $3/M + 10000 x $0.30/M + 2000 x $3.75/M + 503 x $15/M
    assert cost(event) == D("0.00015") + D("0.003") + D("0.0075") + D("0.007545")


def test_same_usage_costs_the_same_whichever_convention_reported_it():
    """No double counting: Anthropic's split and OpenAI's inclusive counts agree."""
    anthropic = from_anthropic_message(ANTHROPIC)
    openai_style = from_openai_chat({
        "id": "x", "model": "claude-sonnet-4-5", "created": 1741476542,
        "usage": {"prompt_tokens": 12050, "completion_tokens": 503,
                  "prompt_tokens_details": {"cached_tokens": 10000}}}, provider="anthropic")  # fmt: skip
    assert anthropic.payload.input_tokens == openai_style.payload.input_tokens
    # the OpenAI-style report cannot carry cache writes, so it costs 2000 x ($3.75 - $3)/M less
    assert cost(anthropic) - cost(openai_style) == D("0.0015")


def test_gemini_thinking_tokens_are_billed_as_output():
    resp = {"responseId": "r-1", "modelVersion": "gemini-2.5-flash",
            "usageMetadata": {"promptTokenCount": 12000, "cachedContentTokenCount": 8000,
                              "candidatesTokenCount": 700, "thoughtsTokenCount": 800,
                              "totalTokenCount": 13500}}  # fmt: skip
    event = from_gemini(resp)
    p = event.payload
    assert (p.input_tokens, p.cache_read_tokens, p.output_tokens, p.reasoning_tokens) == (
        12000, 8000, 1500, 800)  # fmt: skip
    # gemini-2.5-flash: 4000 x $0.30/M + 8000 x $0.03/M + 1500 x $2.50/M
    assert cost(event) == D("0.0012") + D("0.00024") + D("0.00375")


APIFY_RUN = {"data": {
    "id": "HG7ML7M8z78YcAPEB", "actId": "HDSasDasz78YcAPEB", "status": "SUCCEEDED",
    "startedAt": "2026-11-20T10:00:00.000Z", "finishedAt": "2026-11-20T10:03:10.000Z",
    "stats": {"computeUnits": 0.13333333333333333, "resultCount": 120},
    "usageTotalUsd": 0.0613, "chargedEventCounts": {"actor-start": 1, "page": 120},
    "usageUsd": {"ACTOR_COMPUTE_UNITS": 0.0533, "DATASET_WRITES": 0.006, "PROXY_SERPS": 0.002},
}}  # fmt: skip


def test_apify_run_uses_usage_total_exactly_not_as_float():
    event = from_apify_run(APIFY_RUN)
    p = event.payload
    assert event.event_id == "apify:HG7ML7M8z78YcAPEB"
    assert event.occurred_at == datetime(2026, 11, 20, 10, 3, 10, tzinfo=UTC)
    assert p.usage_total_usd == D("0.0613") and p.results == 120
    assert p.compute_units == D("0.133333333")  # 0.1333... rounded to nano-units
    assert cost(event) == D("0.0613")
    assert sum(c.amount for c in PRICER.price(event).components) == D("0.0613")


def test_apify_without_reported_usage_is_priced_from_compute_units():
    run = {**APIFY_RUN["data"], "usageTotalUsd": None, "usageUsd": None,
           "chargedEventCounts": None, "stats": {"computeUnits": 2.5}}  # fmt: skip
    assert cost(from_apify_run(run, plan="scale")) == D("0.75")  # 2.5 CU x $0.30


def test_workflow_engines():
    n8n = from_n8n_execution({"id": "1042", "workflowId": "wf-9", "finished": True,
                              "status": "success", "startedAt": "2026-11-20T10:00:00Z",
                              "stoppedAt": "2026-11-20T10:00:02.500Z"})  # fmt: skip
    assert (n8n.payload.platform, n8n.payload.duration_ms, n8n.event_id) == (
        "n8n",
        2500,
        "n8n:1042",
    )
    assert cost(n8n) == D("0.0048")
    zap = from_zapier_task_usage({"id": "run-77", "zap_id": 123456, "status": "SUCCESS",
                                  "tasks_used": 4, "date": "2026-11-20T09:00:00Z"},
                                 plan="professional")  # fmt: skip
    assert (zap.payload.tasks, zap.payload.status) == (4, "success")
    assert cost(zap) == D("0.0796")  # 4 tasks x $0.0199
    make = from_make_execution({"id": "e-1", "scenarioId": 4242, "status": 3,
                                "operations": 37, "duration": 5310,
                                "timestamp": "2026-11-20T09:00:00Z"}, plan="pro")  # fmt: skip
    assert (make.payload.status, make.payload.operations) == ("error", 37)
    assert cost(make) == D("0.0592")  # 37 ops x $0.0016
    pa = from_power_automate_run({"name": "08585", "properties": {
        "status": "Failed", "startTime": "2026-11-20T09:00:00Z", "endTime": "2026-11-20T09:00:04Z",
        "workflow": {"name": "flow-abc"}, "actions": {"a": {}, "b": {}, "c": {}}}})  # fmt: skip
    assert (pa.payload.status, pa.payload.operations, pa.payload.duration_ms) == ("failed", 3, 4000)
    assert cost(pa) == D("0.006")


@pytest.mark.parametrize(
    ("builder", "payload", "field"),
    [
        (from_openai_chat, {"model": "gpt-4o"}, "usage"),
        (from_openai_chat, {"model": "gpt-4o", "usage": {"prompt_tokens": -5}}, "prompt_tokens"),
        (from_anthropic_message, {"usage": {"input_tokens": 1}}, "model"),
        (from_gemini, {"modelVersion": "gemini-2.5-flash", "usageMetadata": {"promptTokenCount": "many"}}, "promptTokenCount"),
        (from_apify_run, {"id": "r"}, "actId"),
        (from_n8n_execution, {"id": "1"}, "workflowId"),
        (from_make_execution, {"operations": 3}, "scenarioId"),
        (from_power_automate_run, {"name": "x", "properties": {"startTime": "2026-01-01T00:00:00Z"}},
         "workflow.name"),
    ],
)  # fmt: skip
def test_malformed_payloads_name_the_field(builder, payload, field):
    with pytest.raises(BuilderError, match=field.replace(".", r"\.")):
        builder(payload)


def test_detection_and_forced_source():
    assert detect(OPENAI_CHAT) == "openai-chat"
    assert detect(ANTHROPIC) == "anthropic"
    assert detect(APIFY_RUN) == "apify"
    assert build(ANTHROPIC).payload.provider == "anthropic"
    assert build(OPENAI_CHAT, source="openai-chat").payload.model == "gpt-4o-2024-08-06"
    with pytest.raises(BuilderError, match="--source"):
        detect({"hello": "world"})
    with pytest.raises(BuilderError, match="unknown source"):
        build(OPENAI_CHAT, source="cohere")


def test_sdk_objects_are_accepted():
    class SdkResponse:
        def model_dump(self):  # type: ignore[no-untyped-def]
            return OPENAI_CHAT

    assert from_openai_chat(SdkResponse()).payload.input_tokens == 1117
