"""End to end on the real broker and chDB: producer SDK -> worker -> sink -> ClickHouse."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from spendstream.config import Settings
from spendstream.processes import ProcessGroup, wait_for
from spendstream.producer import UsagePublisher, publish_budgets
from spendstream.readback import read_alerts, read_statuses, read_topic
from spendstream.schemas.avro import codec, configure_registry
from spendstream.schemas.budget import BudgetDefinition
from spendstream.schemas.models import Attributes, DeadLetter, LlmUsage, UsageEvent
from spendstream.schemas.money import to_nanos
from spendstream.sinks.warehouse import SinkWarehouse, sink_warehouse
from spendstream.streams.budget_feed import BudgetFeed
from spendstream.topics import ensure_topics

pytestmark = pytest.mark.integration

# gpt-4o-mini (genai-prices): $0.15/M input, $0.075/M cached input, $0.60/M output.
MINI_IN, MINI_CACHED, MINI_OUT = Decimal("0.15"), Decimal("0.075"), Decimal("0.60")
M = Decimal(1_000_000)


def known_events(n: int, org: str) -> tuple[list[UsageEvent], Decimal]:
    """n events with token counts chosen per index; returns events and the exact sum."""
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    if base.day == 1 and base.hour == 0 and base.minute < 15:  # keep one monthly period
        base = base.replace(minute=15)
    events, total = [], Decimal(0)
    for i in range(n):
        inp, cached, out = 1000 + 7 * i, (i % 5) * 100, 200 + 3 * i
        total += ((inp - cached) * MINI_IN + cached * MINI_CACHED + out * MINI_OUT) / M
        events.append(
            UsageEvent(
                event_id=f"{org}-{i}",
                occurred_at=base + timedelta(milliseconds=i),
                source="llm",
                attributes=Attributes(org=org, team="ml" if i % 2 else "web"),
                payload=LlmUsage(
                    provider="openai",
                    model="gpt-4o-mini",
                    input_tokens=inp,
                    cache_read_tokens=cached,
                    output_tokens=out,
                ),  # fmt: skip
            )
        )
    return events, total


def start_pipeline(settings: Settings, services: ProcessGroup) -> SinkWarehouse:
    ensure_topics(settings)
    services.start("worker", "worker")
    services.start("sink", "sink")
    return wait_for("sink query port", lambda: sink_warehouse(settings), 90, services)


def test_thousand_events_exact_totals_and_one_alert_per_tier(settings, services):
    org = "acme"
    events, total = known_events(1000, org)
    # The token counts are chosen so every cost is exact at nano-units (no rounding).
    assert total == total.quantize(Decimal("0.000000001"))
    ml_total = Decimal(0)
    for i, e in enumerate(events):
        if i % 2:
            p = e.payload
            ml_total += ((p.input_tokens - p.cache_read_tokens) * MINI_IN
                         + p.cache_read_tokens * MINI_CACHED + p.output_tokens * MINI_OUT) / M  # fmt: skip
    # Limits chosen so the org budget crosses 50/75/90 but not 100, the ml child all tiers.
    org_limit = (total / Decimal("0.95")).quantize(Decimal("0.01"))
    ml_limit = (ml_total / Decimal("1.2")).quantize(Decimal("0.01"))
    budgets = [
        BudgetDefinition(budget_id="org", name="Acme", limit=org_limit, scope={"org": org}),
        BudgetDefinition(
            budget_id="ml",
            name="ML",
            parent_id="org",
            limit=ml_limit,
            scope={"org": org, "team": "ml"},
        ),  # fmt: skip
    ]
    ensure_topics(settings)
    publish_budgets(settings, budgets)
    warehouse = start_pipeline(settings, services)

    with UsagePublisher(settings) as publisher:
        report = publisher.publish_many(events)
    assert (report.sent, report.failed) == (1000, 0)

    def all_stored() -> bool:
        n = warehouse.query("SELECT count() FROM priced_usage FINAL").scalar()
        a = warehouse.query("SELECT count() FROM cost_allocations FINAL").scalar()
        return n == 1000 and a == 1500

    wait_for("1000 events in ClickHouse", all_stored, 180, services)

    # ClickHouse: the exact Decimal sum, no duplicates.
    ch_total, ids, uniq = warehouse.query(
        "SELECT sum(cost), count(), uniqExact(event_id) FROM priced_usage"
    ).rows[0]
    assert ch_total == total
    assert ids == uniq == 1000
    per_budget = dict(warehouse.query(
        "SELECT budget_id, sum(amount) FROM cost_allocations FINAL GROUP BY budget_id").rows)  # fmt: skip
    assert per_budget == {"org": total, "ml": ml_total}

    # Stream state (budget-status topic) agrees to the last unit.
    def settled():
        statuses = {s.budget_id: s for s in read_statuses(settings)}
        if statuses.get("org") and statuses["org"].spent == total and \
                statuses.get("ml") and statuses["ml"].spent == ml_total:  # fmt: skip
            return statuses
        return None

    statuses = wait_for("budget status", settled, 60, services)
    assert statuses["org"].event_count == 1000 and statuses["ml"].event_count == 500
    assert statuses["ml"].state == "exceeded" and statuses["org"].state == "critical"

    # A worker's budget feed folds them by their progress header, undecoded: every status
    # record the worker wrote states its progress (none waits to be decoded for order),
    # and the one kept per key is the newest.
    feed = BudgetFeed(settings, follow_status=True)
    feed.start()
    try:
        assert feed.caught_up.wait(60)
        assert feed.statuses._raw == {} and feed.statuses._decoded == {}
        kept = {key.split("|")[0]: progress for key, (progress, _) in feed.statuses._best.items()}
        assert kept == {"org": (1000, to_nanos(total)), "ml": (500, to_nanos(ml_total))}
        by_budget = {s.budget_id: s for s in feed.statuses.values()}
        assert by_budget["org"].spent == total and by_budget["ml"].spent == ml_total
    finally:
        feed.stop()

    # Exactly one alert per crossed tier (forecast alerts depend on the day of the month
    # this runs; the oracle test in test_budget_oracle.py pins those down).
    expected = {
        "org": ["threshold:50", "threshold:75", "threshold:90"],
        "ml": ["threshold:50", "threshold:75", "threshold:90", "threshold:100", "exceeded"],
    }

    def alerts_in():
        got = [a for a in read_alerts(settings) if a.kind in ("threshold", "exceeded")]
        return got if len(got) >= 8 else None

    alerts = wait_for("alerts", alerts_in, 60, services)
    by_budget: dict[str, list[str]] = defaultdict(list)
    for a in alerts:
        by_budget[a.budget_id].append(a.alert_id.split(":", 2)[2])
    assert {k: sorted(v) for k, v in by_budget.items()} == {
        k: sorted(v) for k, v in expected.items()
    }
    everything = read_alerts(settings)
    assert Counter(a.alert_id for a in everything).most_common(1)[0][1] == 1
    assert {a.kind for a in everything} <= {"threshold", "exceeded", "forecast"}
    wait_for("alerts in ClickHouse",
             lambda: warehouse.query("SELECT count() FROM budget_alerts FINAL").scalar()
             == len(everything), 60, services)  # fmt: skip


def test_bad_input_goes_to_dlq_with_reason_and_duplicates_count_once(settings, services):
    ensure_topics(settings)
    publish_budgets(settings, [BudgetDefinition(budget_id="all", name="all", limit="1000",
                                                scope={"source": "llm"})])  # fmt: skip
    warehouse = start_pipeline(settings, services)
    events, total = known_events(20, "dup")
    with UsagePublisher(settings) as publisher:
        for e in events:
            publisher.publish(e)
        for e in events[:5]:  # same event ids again
            publisher.publish(e)
        publisher.publish_raw(settings.topics.llm, b"bad-1", b"\xc3\x01garbage")
        publisher.publish_raw(settings.topics.llm, b"bad-2", b"not avro at all")
        unknown = events[0].model_copy(update={
            "event_id": "unknown-model",
            "payload": LlmUsage(provider="openai", model="gpt-99-imaginary", input_tokens=1)})  # fmt: skip
        publisher.publish(unknown)
        publisher.flush()

    wait_for("DLQ rows", lambda: warehouse.query(
        "SELECT count() FROM dead_letters FINAL").scalar() == 3, 120, services)  # fmt: skip
    wait_for("priced rows", lambda: warehouse.query(
        "SELECT count() FROM priced_usage FINAL").scalar() == 20, 60, services)  # fmt: skip
    assert warehouse.query("SELECT sum(cost) FROM priced_usage FINAL").scalar() == total
    # allocations come from another topic; they may land a moment after the priced rows
    wait_for("allocations", lambda: warehouse.query(
        "SELECT sum(amount) FROM cost_allocations FINAL").scalar() == total, 60, services)  # fmt: skip
    reasons = dict(warehouse.query(
        "SELECT error_code, count() FROM dead_letters FINAL GROUP BY error_code").rows)  # fmt: skip
    assert reasons == {"decode": 2, "unknown_model": 1}
    dead = [d for _, d in read_topic(settings, settings.topics.dlq,
                                     lambda v: DeadLetter.from_avro(codec("DeadLetter").decode(v)))]  # fmt: skip
    assert all(d.reason and d.origin.topic == settings.topics.llm for d in dead)
    assert any("gpt-99-imaginary" in d.reason for d in dead)


def test_sql_cli_works_while_the_sink_holds_chdb(settings, services):
    """chDB admits one process per directory: the CLI goes through the running sink."""
    import subprocess
    import sys

    warehouse = start_pipeline(settings, services)
    events, total = known_events(3, "cli")
    with UsagePublisher(settings) as publisher:
        publisher.publish_many(events)
    wait_for("rows", lambda: warehouse.query(
        "SELECT count() FROM priced_usage FINAL").scalar() == 3, 60, services)  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "spendstream.cli", "sql",
         "SELECT count() AS n, sum(cost) AS total FROM priced_usage FINAL", "--format", "json"],
        env=services.env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert rows[0]["n"] == 3 and Decimal(rows[0]["total"]) == total
    refused = subprocess.run(
        [sys.executable, "-m", "spendstream.cli", "sql", "DROP TABLE priced_usage"],
        env=services.env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert refused.returncode == 1 and "DROP is refused" in refused.stderr
    assert warehouse.query("SELECT count() FROM priced_usage").scalar() == 3


def test_confluent_framed_pipeline_with_a_schema_registry(settings, services):
    from tests.registry_stub import RegistryStub

    stub = RegistryStub()
    try:
        framed = settings.model_copy(update={"schema_registry_url": stub.url})
        # this test is the edge of its process: it configures the registry, as the CLI
        # does (the publish helpers follow the process's registry, never set it)
        configure_registry(stub.url)
        group = ProcessGroup(framed)
        try:
            ensure_topics(framed)
            publish_budgets(framed, [BudgetDefinition(budget_id="all", name="all", limit="10")])
            warehouse = start_pipeline(framed, group)
            events, total = known_events(30, "framed")
            with UsagePublisher(framed) as publisher:
                publisher.publish_many(events)
            # priced rows and allocations come from different topics: wait for both
            wait_for("framed rows", lambda: warehouse.query(
                "SELECT (SELECT count() FROM cost_allocations FINAL), "
                "(SELECT count() FROM priced_usage FINAL)").rows[0] == (30, 30), 90, group)  # fmt: skip
            assert warehouse.query("SELECT sum(cost) FROM priced_usage FINAL").scalar() == total
            assert warehouse.query("SELECT count() FROM dead_letters").scalar() == 0
            # every Avro topic the pipeline writes registered its subject; the internal
            # batch topics carry JSON rows (schemas/batches.py), not registry records
            t = framed.topics
            wait_for("a status record", lambda: f"{t.status}-value" in stub.subjects, 30, group)
            assert {f"{t.llm}-value", f"{t.budgets}-value"} <= set(stub.subjects)
            assert not {f"{t.priced}-value", f"{t.allocations}-value"} & set(stub.subjects)
        finally:
            group.stop()
    finally:
        configure_registry(None)
        stub.close()


def test_publish_cli_sends_events_and_payloads_and_summarizes_rejections(settings, tmp_path):
    import subprocess
    import sys

    from spendstream.processes import ProcessGroup
    from tests.unit.test_builders import ANTHROPIC, OPENAI_CHAT

    ensure_topics(settings)
    events, _ = known_events(3, "cli-pub")
    lines = [e.model_dump_json() for e in events]
    lines += [json.dumps(OPENAI_CHAT), json.dumps(ANTHROPIC), '{"event_id": "x"}', "not json"]
    path = tmp_path / "usage.jsonl"
    path.write_text("\n".join(lines) + "\n")
    env = ProcessGroup(settings).env
    result = subprocess.run([sys.executable, "-m", "spendstream.cli", "publish", str(path)],
                            env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 1  # some lines were rejected
    assert "sent 5, failed 0, rejected 2" in result.stdout
    assert "line 6:" in result.stdout and "line 7:" in result.stdout
    got = read_topic(settings, settings.topics.llm, lambda v: UsageEvent.decode(v))
    assert len(got) == 5
