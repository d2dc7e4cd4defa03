"""Per-call cost of pricing one LLM event: CompiledPricer against Pricer, as JSON.

    .venv/bin/python benchmarks/pricing.py [--calls 20000] [--rounds 5]

Figures are microseconds per call on one core (this process, pinned to one CPU where the
OS allows), best of ``rounds``:
  compiled_us          CompiledPricer.price_llm on plain values (the hot path)
  compiled_payload_us  CompiledPricer.price_payload on a fastavro-decoded record
  pricer_us            Pricer.price_llm on an already validated LlmUsage (today's path)
  compile_ms           the first call for a model: lookup and compilation, once
  data_load_ms         loading genai-prices' bundled data, once per process
Both prices are checked equal before timing; ``fallback`` is null when the call was
priced by compiled rates (claude-sonnet-4-5 has tiered prices: compiled too).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spendstream.schemas.avro import codec  # noqa: E402
from spendstream.schemas.models import LlmUsage, UsageEvent  # noqa: E402
from spendstream.streams.compiled_pricing import CompiledPricer  # noqa: E402

WHEN = datetime(2026, 11, 15, 12, 0, tzinfo=UTC)
EVENTS = {
    # a typical chat call
    "gpt-4o-mini": LlmUsage(provider="openai", model="gpt-4o-mini", input_tokens=1_200,
                            cache_read_tokens=256, output_tokens=300),
    # cache read and write, compiled
    "claude-haiku-4-5": LlmUsage(provider="anthropic", model="claude-haiku-4-5",
                                 input_tokens=6_000, cache_read_tokens=4_000,
                                 cache_write_tokens=1_500, output_tokens=400),
    # the same shape on a model with tiered (prompt-size) prices, below its 200k tier
    "claude-sonnet-4-5": LlmUsage(provider="anthropic", model="claude-sonnet-4-5",
                                  input_tokens=6_000, cache_read_tokens=4_000,
                                  cache_write_tokens=1_500, output_tokens=400),
    # ... and above it: every line at the tier rates
    "claude-sonnet-4-5-long": LlmUsage(provider="anthropic", model="claude-sonnet-4-5",
                                       input_tokens=250_000, cache_read_tokens=180_000,
                                       cache_write_tokens=20_000, output_tokens=2_000),
}  # fmt: skip


def best_us(fn: Callable[[], Any], calls: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return round(best * 1e6, 2)


def measure(usage: LlmUsage, calls: int, rounds: int) -> dict[str, Any]:
    compiled = CompiledPricer()
    pricer = compiled.pricer
    c = codec("UsageEvent")
    event = UsageEvent(event_id="b", occurred_at=WHEN, source="llm", payload=usage)
    record = c.decode(c.encode(event.to_avro()))
    payload, occurred_at = record["payload"], record["occurred_at"]
    args = (usage.provider, usage.model, occurred_at, usage.input_tokens, usage.output_tokens,
            usage.cache_read_tokens, usage.cache_write_tokens, usage.input_audio_tokens,
            usage.output_audio_tokens, usage.images)  # fmt: skip

    start = time.perf_counter()
    first = compiled.price_llm(*args)
    compile_ms = (time.perf_counter() - start) * 1e3
    expected = pricer.price_llm(usage, occurred_at)
    assert first.total == expected.total and first.components() == expected.components
    assert compiled.price_payload(payload, occurred_at) == first

    price_llm, price_payload = compiled.price_llm, compiled.price_payload
    compiled_us = best_us(lambda: price_llm(*args), calls, rounds)
    payload_us = best_us(lambda: price_payload(payload, occurred_at), calls, rounds)
    pricer_us = best_us(lambda: pricer.price_llm(usage, occurred_at), max(calls // 10, 50), rounds)
    return {
        "fallback": first.fallback,
        "price_source": first.source,
        "total": str(first.total),
        "compiled_us": compiled_us,
        "compiled_payload_us": payload_us,
        "pricer_us": pricer_us,
        "speedup": round(pricer_us / compiled_us, 1),
        "compile_ms": round(compile_ms, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    from genai_prices.data_snapshot import get_snapshot

    start = time.perf_counter()
    get_snapshot()
    load_ms = round((time.perf_counter() - start) * 1e3, 1)
    result: dict[str, Any] = {"benchmark": "pricing", "calls": args.calls, "rounds": args.rounds}
    for name, usage in EVENTS.items():
        result[name] = measure(usage, args.calls, args.rounds)
    result["data_load_ms"] = load_ms
    result["python"] = platform.python_version()
    result["cpu"] = platform.processor() or platform.machine()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
