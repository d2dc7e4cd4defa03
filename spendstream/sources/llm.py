"""LLM calls: one kind, ``llm``, read from each provider's own response formats.

The providers are not kinds of their own: every call is an ``LlmUsage`` priced by one
pricer (catalog, then genai-prices, compiled on the price stage's fast path), whatever
API reported it; what differs is the payload format, so each API is a ``PayloadFormat``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from spendstream import builders as b
from spendstream.schemas.models import LlmUsage

from .registry import PayloadFormat, SourceKind


def _usage(data: Mapping[str, Any]) -> Mapping[str, Any]:
    usage = data.get("usage")
    return usage if isinstance(usage, Mapping) else {}


def _gemini_batch(data: Mapping[str, Any]) -> bool:
    return ("key" in data and ("response" in data or "error" in data or "status" in data)) or (
        "request" in data and "response" in data and "status" in data
    )


FORMATS = (
    PayloadFormat("anthropic-batch", b.from_anthropic_batch_result,
                  lambda d: "custom_id" in d and "result" in d,
                  label="a line of Anthropic Message Batches results"),
    PayloadFormat("openai-batch", b.from_openai_batch_line,
                  lambda d: "custom_id" in d and "response" in d,
                  label="a line of an OpenAI Batch API output file"),
    PayloadFormat("gemini-batch", b.from_gemini_batch_line, _gemini_batch,
                  label="a line of a Gemini API or Vertex AI batch output"),
    PayloadFormat("gemini", b.from_gemini, lambda d: "usageMetadata" in d,
                  label="Gemini generateContent"),
    PayloadFormat("openai-chat", b.from_openai_chat,
                  lambda d: d.get("object") == "chat.completion"
                  or ("prompt_tokens" in _usage(d) and "choices" in d),
                  label="OpenAI Chat Completions (and compatible APIs)"),
    PayloadFormat("openai-responses", b.from_openai_responses,
                  lambda d: d.get("object") == "response"
                  or "output_tokens_details" in _usage(d),
                  label="OpenAI Responses"),
    PayloadFormat("openai-embedding", b.from_openai_embedding,
                  lambda d: d.get("object") == "list" and "prompt_tokens" in _usage(d),
                  label="OpenAI embeddings"),
    PayloadFormat("anthropic", b.from_anthropic_message,
                  lambda d: d.get("type") == "message"
                  or "cache_creation_input_tokens" in _usage(d),
                  label="Anthropic Messages (also on Bedrock and Vertex AI)"),
)  # fmt: skip

KIND = SourceKind(
    name="llm",
    wire="llm",
    payload=LlmUsage,
    price=lambda pricer, payload, when: pricer.price_llm(payload, when),
    columns={
        "provider": "provider",
        "model": "model",
        "operation": "operation",
        "input_tokens": "input_tokens",
        "output_tokens": "output_tokens",
        "cache_read_tokens": "cache_read_tokens",
        "cache_write_tokens": "cache_write_tokens",
        "reasoning_tokens": "reasoning_tokens",
        "images": "images",
        "cache_write_1h_tokens": "cache_write_1h_tokens",
        "service_tier": lambda p: p["service_tier"] or "",
        "batch": lambda p: int(p["batch"]),
    },  # fmt: skip
    formats=FORMATS,
    dimensions={"provider": "provider", "model": "model"},
    order=10,
    label="an LLM call",
)
