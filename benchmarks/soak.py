"""Soak: a steady load for a long time; throughput, consumer lag and memory over time, as JSON.

    .venv/bin/python benchmarks/soak.py [--minutes 30] [--rate 5000] [--sample-s 10]
    .venv/bin/python benchmarks/soak.py --short        # 1 minute at 300 events/s (CI)

One worker and the sink run as processes on a local broker (started here unless
SPENDSTREAM_KAFKA_BOOTSTRAP_SERVERS is set), 100 budgets. A producer thread offers
``--rate`` LLM usage events per second for ``--minutes``; every ``--sample-s`` the script
records events offered, priced and aggregated, worker and sink consumer lag, and worker
and sink RSS. Then input stops and the script waits (up to ``--drain-minutes``) for the
lag to reach zero. ``memory`` compares worker RSS over the second half of the run with
the first (flat = grew less than 10 %), so a leak shows whatever the rate.

The dedupe id set grows until its window is full (about 100 bytes per id in the window,
by design), so the run uses a 5-minute window (``--dedupe-window-s``): the set reaches
its steady size early and a flat RSS after that means nothing else accumulates.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from confluent_kafka import Producer  # noqa: E402

from benchmarks._local import bench_settings, produce  # noqa: E402
from spendstream.processes import ProcessGroup, wait_for, worker_metrics  # noqa: E402
from spendstream.producer import producer_config, publish_budgets  # noqa: E402
from spendstream.schemas.avro import codec  # noqa: E402
from spendstream.schemas.budget import BudgetDefinition  # noqa: E402
from spendstream.schemas.models import Attributes, LlmUsage, UsageEvent  # noqa: E402
from spendstream.topics import ensure_topics, pipeline_lags  # noqa: E402

TEAMS = 99


def rss_mb(pid: int) -> float | None:
    """Resident memory of ``pid`` and its descendants (``spendstream worker`` runs the
    faust worker as a child process)."""
    total_kb, pending, seen = 0, [pid], set()
    while pending:
        p = pending.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
            for task in Path(f"/proc/{p}/task").iterdir():
                pending += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            if p == pid:
                return None
    return round(total_kb / 1024, 1)


class Load(threading.Thread):
    """Offers events at a steady rate (in 100 ms slices) until stopped."""

    def __init__(self, settings: Any, rate: float) -> None:
        super().__init__(daemon=True)
        self.settings, self.rate = settings, rate
        self.sent = 0
        self.stop = threading.Event()

    def run(self) -> None:
        # the load generator publishes as the SDK does (its producer settings)
        producer = Producer(producer_config(self.settings))
        enc = codec("UsageEvent")
        start = time.monotonic()
        while not self.stop.is_set():
            due = int((time.monotonic() - start) * self.rate)
            while self.sent < due:
                i = self.sent
                e = UsageEvent(
                    event_id=f"soak-{i}", occurred_at=datetime.now(UTC), source="llm",
                    attributes=Attributes(org="soak", team=f"team-{i % TEAMS}"),
                    payload=LlmUsage(provider="openai", model="gpt-4o-mini",
                                     input_tokens=100 + i % 900, output_tokens=20 + i % 300),
                )  # fmt: skip
                produce(producer, self.settings.topics.llm, e.event_id.encode(),
                        enc.encode(e.to_avro()))  # fmt: skip
                self.sent += 1
            producer.poll(0)
            time.sleep(0.1)
        producer.flush(120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--rate", type=float, default=5000)
    parser.add_argument("--sample-s", type=float, default=10)
    parser.add_argument("--drain-minutes", type=float, default=30)
    parser.add_argument("--short", action="store_true", help="1 minute at 300 events/s")
    parser.add_argument("--dedupe-window-s", type=int, default=300,
                        help="dedupe window of the run (the id set must reach its steady "
                             "size within the run for a flat RSS to mean anything)")  # fmt: skip
    args = parser.parse_args()
    if args.short:
        args.minutes, args.rate, args.sample_s, args.drain_minutes = 1, 300, 5, 5
    budgets = [BudgetDefinition(budget_id="org", name="org", limit="1000000",
                                scope={"org": "soak"})]  # fmt: skip
    budgets += [BudgetDefinition(budget_id=f"team-{t}", name=f"team {t}", parent_id="org",
                                 limit="5000", scope={"team": f"team-{t}"})
                for t in range(TEAMS)]  # fmt: skip

    samples: list[dict[str, Any]] = []
    with bench_settings(dedupe_window_s=args.dedupe_window_s) as settings:
        ensure_topics(settings)
        publish_budgets(settings, budgets)
        group = ProcessGroup(settings)
        load = Load(settings, args.rate)
        try:
            worker = group.start("worker", "worker")
            sink = group.start("sink", "sink")
            port = settings.worker_web_port
            wait_for("worker metrics", lambda: worker_metrics(port), 120, group)
            began = time.monotonic()
            load.start()

            def sample(phase: str) -> dict[str, Any]:
                m = worker_metrics(port) or {}
                row = {
                    "t_s": round(time.monotonic() - began, 1), "phase": phase,
                    "offered": load.sent, "priced": m.get("priced", 0),
                    "aggregated": m.get("aggregated", 0), "dedupe_ids": m.get("dedupe_ids"),
                    **pipeline_lags(settings),
                    "worker_rss_mb": rss_mb(worker.pid), "sink_rss_mb": rss_mb(sink.pid),
                }  # fmt: skip
                samples.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
                return row

            end = began + args.minutes * 60
            while time.monotonic() < end:
                time.sleep(min(args.sample_s, max(end - time.monotonic(), 0)))
                group.check_alive()
                sample("load")
            load.stop.set()
            load.join(180)
            run_s = time.monotonic() - began
            drain_end = time.monotonic() + args.drain_minutes * 60
            final = sample("drain")
            while (final["worker"] or final["sink"]) and time.monotonic() < drain_end:
                time.sleep(args.sample_s)
                group.check_alive()
                final = sample("drain")
            drained_s = time.monotonic() - began - run_s
        finally:
            load.stop.set()
            group.stop()

    loaded = [s for s in samples if s["phase"] == "load" and s["worker_rss_mb"]]
    half = len(loaded) // 2
    first = max((s["worker_rss_mb"] for s in loaded[: max(half, 1)]), default=0)
    second = max((s["worker_rss_mb"] for s in loaded[half:]), default=0)
    result = {
        "benchmark": "soak",
        "minutes": args.minutes,
        "offered_rate": args.rate,
        "dedupe_window_s": args.dedupe_window_s,
        "events_offered": load.sent,
        "events_priced": final["priced"],
        "offered_per_s": round(load.sent / run_s),
        "processed_per_s_during_load": round(loaded[-1]["priced"] / loaded[-1]["t_s"])
        if loaded
        else 0,
        "drain_s": round(drained_s, 1),
        "final_lag": {"worker": final["worker"], "sink": final["sink"]},
        "memory": {
            "worker_rss_first_half_max_mb": first,
            "worker_rss_second_half_max_mb": second,
            "worker_rss_growth_pct": round((second - first) * 100 / first, 1) if first else None,
            "flat": bool(first) and second <= first * 1.10,
            "sink_rss_max_mb": max((s["sink_rss_mb"] or 0 for s in samples), default=0),
        },
        "samples": samples,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
