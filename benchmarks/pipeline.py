"""Pipeline throughput and latency: price + match + aggregate + alert, as JSON.

    .venv/bin/python benchmarks/pipeline.py [--events 60000] [--budgets 1000]
        [--rate 10000] [--seconds 10] [--checks 2000]

1. Sustained throughput: ``--events`` LLM usage events are loaded into usage.llm first,
   then one worker process starts; timed from its first priced event until every
   allocation is aggregated (each event counts toward its team budget and the org
   budget: 1,000 budgets in all by default).
2. Produce-to-alert latency: events are then produced at ``--rate`` per second for
   ``--seconds``; budget limits are set so this phase drives every team budget through
   its 50/75/90/100 % tiers. Latency = arrival of a threshold alert on budget-alerts
   minus the produce time of the event that triggered it.
3. Pre-flight check: ``--checks`` sequential POST /check requests to the worker's HTTP
   API (and the same check in-process, without HTTP).

Starts its own local broker unless SPENDSTREAM_KAFKA_BOOTSTRAP_SERVERS is set. The broker,
the worker and this load generator share the machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
import urllib.request
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition  # noqa: E402

from benchmarks._local import bench_settings, produce  # noqa: E402
from spendstream.processes import ProcessGroup, wait_for, worker_metrics  # noqa: E402
from spendstream.producer import publish_budgets  # noqa: E402
from spendstream.schemas.avro import codec  # noqa: E402
from spendstream.schemas.budget import BudgetDefinition  # noqa: E402
from spendstream.schemas.checks import CheckRequest  # noqa: E402
from spendstream.schemas.models import Attributes, BudgetAlert, LlmUsage, UsageEvent  # noqa: E402
from spendstream.streams.matching import BudgetRegistry  # noqa: E402
from spendstream.streams.preflight import check  # noqa: E402
from spendstream.streams.pricing import Pricer  # noqa: E402
from spendstream.topics import ensure_topics  # noqa: E402

TARGETS = {"events_per_s": 20_000, "alert_p99_ms": 250, "check_p99_ms": 5}


def event(i: int, teams: int, tokens: int) -> UsageEvent:
    return UsageEvent(
        event_id=f"e{i}", occurred_at=datetime.now(UTC), source="llm",
        attributes=Attributes(org="bench", team=f"team-{i % teams}"),
        payload=LlmUsage(provider="openai", model="gpt-4o-mini", input_tokens=tokens,
                         output_tokens=tokens // 10),
    )  # fmt: skip


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def metrics(settings: Any) -> dict[str, int]:
    return worker_metrics(settings.worker_web_port) or {}


class AlertClock(threading.Thread):
    """Records when each alert arrives on budget-alerts (from the topic's current end)."""

    def __init__(self, settings: Any) -> None:
        super().__init__(daemon=True)
        self.settings, self.arrivals, self.stop = settings, [], threading.Event()
        self.ready = threading.Event()

    def run(self) -> None:
        topic = self.settings.topics.alerts
        consumer = Consumer({"bootstrap.servers": self.settings.bootstrap_servers,
                             "group.id": "bench-alerts", "enable.auto.commit": False})  # fmt: skip
        parts = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_END) for p in parts])
        consumer.poll(0.5)
        self.ready.set()
        dec = codec("BudgetAlert")
        while not self.stop.is_set():
            msg = consumer.poll(0.1)
            if msg is None or msg.error():
                continue
            now = time.time()
            self.arrivals.append((BudgetAlert.from_avro(dec.decode(msg.value())), now))
        consumer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--budgets", type=int, default=1000)
    parser.add_argument("--rate", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--checks", type=int, default=2000)
    args = parser.parse_args()
    teams = args.budgets - 1
    pricer = Pricer()
    small, big = 100, 2000  # tokens per event in phase 1 and phase 2
    phase2 = int(args.rate * args.seconds)
    cost1 = pricer.price(event(0, teams, small)).total
    cost2 = pricer.price(event(0, teams, big)).total
    # each team's limit: phase 1 uses under half of it, phase 2 ends at 110 %
    per_team = Decimal(args.events) / teams * cost1 + Decimal(phase2) / teams * cost2
    team_limit = (per_team / Decimal("1.1")).quantize(Decimal("0.000001"))
    assert Decimal(args.events) / teams * cost1 < team_limit / 2, "phase 1 would raise alerts"
    budgets = [BudgetDefinition(budget_id="org", name="org", limit="1000000",
                                scope={"org": "bench"})]  # fmt: skip
    budgets += [BudgetDefinition(budget_id=f"team-{t}", name=f"team {t}", parent_id="org",
                                 limit=team_limit, scope={"team": f"team-{t}"})
                for t in range(teams)]  # fmt: skip

    with bench_settings(batch_size=2000, batch_linger_ms=20) as settings:
        ensure_topics(settings)
        publish_budgets(settings, budgets)
        producer = Producer({"bootstrap.servers": settings.bootstrap_servers, "linger.ms": 5,
                             "enable.idempotence": True, "acks": "all"})  # fmt: skip
        enc = codec("UsageEvent")

        def send(e: UsageEvent) -> None:
            produce(producer, settings.topics.llm, e.event_id.encode(), enc.encode(e.to_avro()))

        for i in range(args.events):
            send(event(i, teams, small))
        producer.flush(120)

        group = ProcessGroup(settings)
        try:
            began = time.time()
            group.start("worker", "worker")
            wait_for("worker metrics", lambda: worker_metrics(settings.worker_web_port), 120, group)
            first = None
            want = 2 * args.events
            while True:
                m = metrics(settings)
                if first is None and m.get("priced", 0) > 0:
                    first = time.time()
                if m.get("aggregated", 0) >= want:
                    done = time.time()
                    break
                group.check_alive()
                time.sleep(0.1)
            assert first is not None
            throughput = args.events / (done - first)

            clock = AlertClock(settings)
            clock.start()
            clock.ready.wait(30)
            produced: dict[str, float] = {}
            start = time.time()
            for i in range(phase2):
                due = start + i / args.rate
                while time.time() < due:
                    producer.poll(0)
                    time.sleep(0.0005)
                e = event(args.events + i, teams, big)
                produced[e.event_id] = time.time()
                send(e)
            producer.flush(60)
            achieved = phase2 / (time.time() - start)
            want += 2 * phase2
            wait_for("phase 2 aggregated", lambda: metrics(settings).get("aggregated", 0) >= want,
                     300, group)  # fmt: skip
            time.sleep(2)
            clock.stop.set()
            latencies = [(at - produced[a.triggered_by]) * 1000 for a, at in clock.arrivals
                         if a.kind == "threshold" and a.triggered_by in produced]  # fmt: skip

            body = json.dumps({"estimated_cost": "0.01",
                               "attributes": {"org": "bench", "team": "team-7"}}).encode()  # fmt: skip
            url = f"http://127.0.0.1:{settings.worker_web_port}/check"
            http_ms = []
            for _ in range(args.checks):
                req = urllib.request.Request(url, data=body, method="POST")
                t0 = time.perf_counter()
                with urllib.request.urlopen(req, timeout=5) as resp:
                    assert resp.status == 200
                    resp.read()
                http_ms.append((time.perf_counter() - t0) * 1000)
        finally:
            group.stop()

    registry = BudgetRegistry(budgets)
    request = CheckRequest.model_validate(json.loads(body))
    local_ms = []
    for _ in range(args.checks):
        t0 = time.perf_counter()
        check(request, registry, lambda key: Decimal(1), pricer, datetime.now(UTC))
        local_ms.append((time.perf_counter() - t0) * 1000)

    result = {
        "benchmark": "pipeline",
        "budgets": len(budgets),
        "worker_processes": 1,
        "throughput": {
            "events": args.events,
            "allocations": 2 * args.events,
            "seconds": round(done - first, 2),
            "events_per_s": round(throughput),
            "worker_start_s": round(first - began, 2),
        },
        "latency": {
            "target_rate": args.rate,
            "achieved_rate": round(achieved),
            "events": phase2,
            "threshold_alerts": len(latencies),
            "p50_ms": round(percentile(latencies, 0.5), 1),
            "p99_ms": round(percentile(latencies, 0.99), 1),
            "max_ms": round(max(latencies, default=float("nan")), 1),
        },
        "check": {
            "requests": args.checks,
            "http_p50_ms": round(statistics.median(http_ms), 3),
            "http_p99_ms": round(percentile(http_ms, 0.99), 3),
            "in_process_p99_ms": round(percentile(local_ms, 0.99), 3),
        },
        "targets": TARGETS,
    }
    result["targets_met"] = {
        "events_per_s": throughput >= TARGETS["events_per_s"],
        "alert_p99_ms": result["latency"]["p99_ms"] <= TARGETS["alert_p99_ms"],
        "check_p99_ms": result["check"]["http_p99_ms"] <= TARGETS["check_p99_ms"],
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
