"""Serialization throughput on one core: Avro encode/decode of usage events, as JSON.

    .venv/bin/python benchmarks/serde.py [--events 20000] [--rounds 5]

Figures are events per second on a single core (this process, pinned to one CPU where
the OS allows), best of ``rounds``, for a realistic mix (80% LLM calls, 10% Apify runs,
10% workflow executions):
  encode          pydantic model -> Avro single-object bytes
  decode          Avro bytes -> plain dict (what the codec returns)
  decode_validate Avro bytes -> validated UsageEvent model (what the worker does)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spendstream.demo import synthetic_events  # noqa: E402
from spendstream.schemas.avro import codec  # noqa: E402
from spendstream.schemas.models import UsageEvent  # noqa: E402

TARGET_DECODE_PER_S = 150_000


def best_rate(fn, items, rounds: int) -> float:  # type: ignore[no-untyped-def]
    best = 0.0
    for _ in range(rounds):
        start = time.perf_counter()
        for item in items:
            fn(item)
        best = max(best, len(items) / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    events = synthetic_events("bench", args.events, datetime.now(UTC))
    c = codec("UsageEvent")
    records = [e.to_avro() for e in events]
    blobs = [c.encode(r) for r in records]
    result = {
        "benchmark": "serde",
        "events": args.events,
        "rounds": args.rounds,
        "mean_bytes_per_event": round(sum(map(len, blobs)) / len(blobs), 1),
        "encode_per_s": round(best_rate(lambda e: e.encode(), events, args.rounds)),
        "encode_dict_per_s": round(best_rate(c.encode, records, args.rounds)),
        "decode_per_s": round(best_rate(c.decode, blobs, args.rounds)),
        "decode_validate_per_s": round(best_rate(UsageEvent.decode, blobs, args.rounds)),
        "target_decode_per_s": TARGET_DECODE_PER_S,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
    }
    result["target_met"] = result["decode_per_s"] >= TARGET_DECODE_PER_S
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
