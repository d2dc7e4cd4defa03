"""The job as an idiomatic quixstreams application: the third limit of benchmarks/pipeline.py.

    python benchmarks/quix_pipeline.py --bootstrap H:P --topic T --events N
        [--team-limit USD] [--org-limit USD] [--alerts-topic T]

Issue #8 set the target ">= 1.5x an idiomatic quixstreams app doing the same job"; a figure
from another day says nothing on this shared machine, so the pipeline benchmark runs this
app over the same topic in the same run. Per usage record, written the way quixstreams'
docs show (Application, StreamingDataFrame, stateful filter/apply, group_by, to_topic):
fastavro decode with our codec (a quixstreams Deserializer), dedupe by event_id (State of
the record's key), price (genai-prices rates looked up once per provider and model, each
line in integer nano-units rounded half-even), two allocations (the event's team budget
and its org budget), ``group_by`` budget id through a repartition topic, spend per budget
and month in State, threshold alerts (50/75/90/100 % of the budget's limit) as JSON to an
alerts topic. No tricks our worker does not also get.

Reads ``--events`` records from the start of ``--topic`` with its own consumer group and
prints ONE JSON line: events, seconds (first record in to the last allocation counted),
events_per_s, the quixstreams version, allocations and alerts.

quixstreams is not a dependency of spendstream (it pins its own confluent-kafka): run by
any interpreter, this script makes ``.venv-quix`` at the repo root on first use
(quixstreams, fastavro, genai-prices and pydantic as pyproject.toml pins them, spendstream
itself without its dependencies) and runs itself there. Nothing at module level needs
quixstreams, so the pure parts import (and are unit-tested) without it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv-quix"
QUIXSTREAMS = "quixstreams==3.28.*"
#: what the app imports besides quixstreams, at the versions spendstream itself pins
PINNED = ("fastavro", "genai-prices", "pydantic")
MTOK = 1_000_000
THRESHOLDS = (50, 75, 90, 100)


# --- the venv -------------------------------------------------------------------------------
def requirements(pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """quixstreams plus spendstream's own pins of what the app imports (same prices)."""
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    pins = [d for d in deps if re.split(r"[\s<>=!~;\[]", d, maxsplit=1)[0] in PINNED]
    return [QUIXSTREAMS, *sorted(pins)]


def quix_python(venv: Path = VENV) -> Path:
    """The interpreter of ``venv``, made (or completed) on first use; a stamp file holding
    the requirements says it is complete, so an interrupted install is redone."""
    python = venv / "bin" / "python"
    wanted = requirements()
    stamp = venv / "spendstream-requirements.txt"
    if python.exists() and stamp.exists() and stamp.read_text().splitlines() == wanted:
        return python
    print(f"making {venv} (quixstreams, once)", file=sys.stderr, flush=True)
    for cmd in (
        [sys.executable, "-m", "venv", str(venv)],
        [str(python), "-m", "pip", "install", "-q", *wanted],
        # spendstream for its codec only; its dependencies (faust, chdb, ...) stay out
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "-e", str(ROOT)],
    ):
        subprocess.run(cmd, check=True, stdout=sys.stderr)
    stamp.write_text("\n".join(wanted) + "\n")
    return python


# --- pricing --------------------------------------------------------------------------------
def div_half_even(n: int, d: int) -> int:
    """n / d rounded half-even, in integers (d > 0)."""
    q, r = divmod(n, d)
    if 2 * r > d or (2 * r == d and q % 2):
        q += 1
    return q


def nanos(usd: Decimal) -> int:
    """A rate in USD as integer nano-USD; refuses one with more than 9 decimals."""
    scaled = usd.scaleb(9)
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{usd} has more than 9 decimals: not exact in nano-units")
    return int(scaled)


@dataclass(frozen=True)
class Rates:
    """Nano-USD per million tokens (None: the model has no such price)."""

    input: int
    output: int
    cache_read: int | None = None

    def cost(self, payload: Mapping[str, Any]) -> int:
        """Nano-USD of one LLM call: uncached input, cache reads and output, each line
        rounded once (half-even), the total their sum. Refuses counts it does not price."""
        others = [k for k in ("cache_write_tokens", "input_audio_tokens",
                              "output_audio_tokens", "images") if payload.get(k)]  # fmt: skip
        if others or payload.get("batch") or payload.get("service_tier"):
            raise ValueError(f"the quixstreams app prices plain token calls only, not {others}")
        cached = payload.get("cache_read_tokens") or 0
        if cached and self.cache_read is None:
            raise ValueError("cache reads on a model without a cache-read price")
        return (
            div_half_even((payload["input_tokens"] - cached) * self.input, MTOK)
            + (div_half_even(cached * self.cache_read, MTOK) if cached else 0)
            + div_half_even(payload["output_tokens"] * self.output, MTOK)
        )


def _rate(price: Any) -> int | None:
    if price is None:
        return None
    if not isinstance(price, Decimal):
        raise ValueError(f"tiered prices ({price}) are out of the quixstreams app's scope")
    return nanos(price)


@dataclass
class ModelPrices:
    """genai-prices rates per (provider, model), looked up once at the first event's time
    (its ``calc_price`` per event would decompose the price again every time)."""

    rates: dict[tuple[str, str], Rates] = field(default_factory=dict)

    def lookup(self, provider: str, model: str, when: datetime) -> Rates:
        found = self.rates.get((provider, model))
        if found is None:
            from genai_prices import Usage, calc_price

            price = calc_price(Usage(input_tokens=0, output_tokens=0), model,
                               provider_id=provider, genai_request_timestamp=when).model_price  # fmt: skip
            found = Rates(input=_rate(price.input_mtok) or 0,
                          output=_rate(price.output_mtok) or 0,
                          cache_read=_rate(price.cache_read_mtok))  # fmt: skip
            self.rates[(provider, model)] = found
        return found

    def cost_nanos(self, event: Mapping[str, Any]) -> int:
        """Nano-USD of a decoded LLM usage event."""
        payload = event["payload"]
        return self.lookup(payload["provider"], payload["model"], event["occurred_at"]).cost(
            payload
        )


# --- allocation, spend, alerts --------------------------------------------------------------
def allocations(event: Mapping[str, Any], cost: int) -> list[dict[str, Any]]:
    """One allocation per budget the event counts toward: its team's and its org's."""
    attrs = event["attributes"]
    common = {"event_id": event["event_id"], "month": event["occurred_at"].strftime("%Y-%m"),
              "cost_nanos": cost}  # fmt: skip
    return [{"budget_id": f"{kind}:{attrs[kind]}", **common}
            for kind in ("team", "org") if attrs.get(kind)]  # fmt: skip


@dataclass(frozen=True)
class Limits:
    """Budget limits in nano-USD by budget kind (the part of the id before ':')."""

    by_kind: Mapping[str, int]

    def of(self, budget_id: str) -> int | None:
        return self.by_kind.get(budget_id.split(":", 1)[0])


def add_spend(before: int, cost: int, limit: int | None) -> tuple[int, list[int]]:
    """Spend after ``cost`` and the thresholds (percent of ``limit``) it crossed. Spend only
    grows, so each tier is crossed once."""
    after = before + cost
    if not limit:
        return after, []
    return after, [p for p in THRESHOLDS if before * 100 < limit * p <= after * 100]


def usd(nano: int) -> str:
    return f"{Decimal(nano).scaleb(-9):.9f}"


@dataclass
class Progress:
    """First record in, allocations counted, the moment the last one was."""

    want: int
    counted: int = 0
    alerts: int = 0
    first: float | None = None
    done: float | None = None

    def record_in(self) -> None:
        if self.first is None:
            self.first = time.perf_counter()

    def count(self) -> bool:
        """Count one allocation; True when it is the last one wanted."""
        self.counted += 1
        if self.counted == self.want:
            self.done = time.perf_counter()
            return True
        return False

    def result(self, events: int, version: str) -> dict[str, Any]:
        assert self.first is not None and self.done is not None
        seconds = self.done - self.first
        return {"events": events, "seconds": round(seconds, 3),
                "events_per_s": round(events / seconds), "quixstreams": version,
                "allocations": self.counted, "alerts": self.alerts}  # fmt: skip


# --- the application ------------------------------------------------------------------------
def run_app(bootstrap: str, topic: str, events: int, alerts_topic: str,
            limits: Limits) -> dict[str, Any]:  # fmt: skip
    """Run the app until it counted 2 allocations per event, then stop it."""
    import tempfile

    import quixstreams
    from quixstreams import Application, State
    from quixstreams.models.serializers import Deserializer

    from spendstream.schemas.avro import codec

    progress = Progress(want=2 * events)
    prices = ModelPrices()

    class UsageEventDeserializer(Deserializer):
        """Our Avro records (single-object encoding) to dicts, with fastavro."""

        def __init__(self) -> None:
            super().__init__()
            self.decode: Callable[[bytes], Any] = codec("UsageEvent").decode

        def __call__(self, value: bytes, ctx: Any) -> Any:
            progress.record_in()
            return self.decode(value)

    def first_time(event: dict[str, Any], state: State) -> bool:
        if state.exists("seen"):
            return False
        state.set("seen", True)
        return True

    def allocate(event: dict[str, Any]) -> list[dict[str, Any]]:
        return allocations(event, prices.cost_nanos(event))

    def spend(row: dict[str, Any], state: State) -> list[dict[str, Any]]:
        limit = limits.of(row["budget_id"])
        after, crossed = add_spend(state.get(row["month"], 0), row["cost_nanos"], limit)
        state.set(row["month"], after)
        progress.alerts += len(crossed)
        if progress.count():
            app.stop()
        return [{"budget_id": row["budget_id"], "period": row["month"], "threshold": p,
                 "spent": usd(after), "limit": usd(limit or 0),
                 "triggered_by": row["event_id"]} for p in crossed]  # fmt: skip

    state_dir = tempfile.mkdtemp(prefix="spendstream-quix-")
    app = Application(broker_address=bootstrap, consumer_group=f"quix-limit-{uuid.uuid4()}",
                      auto_offset_reset="earliest", state_dir=state_dir,
                      loglevel=os.environ.get("LIMITS_LOGLEVEL", "WARNING").upper())  # fmt: skip
    usage = app.topic(topic, value_deserializer=UsageEventDeserializer())
    alerts = app.topic(alerts_topic, key_serializer="str", value_serializer="json")

    sdf = app.dataframe(usage)
    sdf = sdf.filter(first_time, stateful=True)
    sdf = sdf.apply(allocate, expand=True)
    sdf = sdf.group_by("budget_id")
    sdf = sdf.apply(spend, stateful=True, expand=True)
    sdf.to_topic(alerts)
    try:
        app.run()
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)
    return progress.result(events, quixstreams.__version__)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--team-limit", type=Decimal, help="USD per team budget and month")
    parser.add_argument("--org-limit", type=Decimal, help="USD per org budget and month")
    parser.add_argument("--alerts-topic", help="default: <topic>.quix-alerts")
    args = parser.parse_args()
    try:
        import quixstreams  # noqa: F401
    except ImportError:
        if os.environ.get("SPENDSTREAM_QUIX_VENV"):
            raise SystemExit(f"quixstreams is missing from {sys.executable}") from None
        python = quix_python()
        os.execve(python, [str(python), __file__, *sys.argv[1:]],
                  {**os.environ, "SPENDSTREAM_QUIX_VENV": "1"})  # fmt: skip
    limits = Limits({kind: nanos(value) for kind, value in
                     (("team", args.team_limit), ("org", args.org_limit)) if value is not None})  # fmt: skip
    result = run_app(args.bootstrap, args.topic, args.events,
                     args.alerts_topic or f"{args.topic}.quix-alerts", limits)  # fmt: skip
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
