"""``spendstream demo``: the whole pipeline on this machine, checked against its own input.

Starts local Kafka (unless bootstrap servers are configured), a worker and the sink as
real processes, publishes synthetic usage for a fresh demo organisation, then shows the
budgets' status and alerts read back from Kafka and a spend summary from ClickHouse, and
checks that every figure equals what was published, to the nano-unit.
"""

from __future__ import annotations

import random
import secrets
import socket
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from spendstream.config import Settings
from spendstream.errors import SpendstreamError
from spendstream.schemas.budget import BudgetDefinition, validate_hierarchy
from spendstream.schemas.fx import FxRate
from spendstream.schemas.models import (
    ApifyRun,
    Attributes,
    LlmUsage,
    UsageEvent,
    WorkflowRun,
)
from spendstream.schemas.money import from_nanos, plain, to_nanos
from spendstream.sinks.notify.receiver import WebhookReceiver
from spendstream.streams.fx import FxTable, Rate
from spendstream.streams.matching import BudgetRegistry
from spendstream.streams.pricing import Pricer

LLM_MODELS = [
    ("openai", "gpt-4o"),
    ("openai", "gpt-4o-mini"),
    ("anthropic", "claude-sonnet-4-5"),
    ("anthropic", "claude-haiku-4-5"),
    ("google", "gemini-2.5-flash"),
]
TEAMS = ["ml", "web", "data"]


class DemoError(SpendstreamError, RuntimeError):
    pass


@dataclass
class Plan:
    """Synthetic input plus what it must produce (the oracle)."""

    org: str
    events: list[UsageEvent]
    budgets: list[BudgetDefinition]
    rates: list[FxRate] = field(default_factory=list)
    total: Decimal = Decimal(0)
    per_budget: dict[str, Decimal] = field(default_factory=dict)
    allocations: int = 0
    expected_alerts: dict[str, list[str]] = field(default_factory=dict)


def synthetic_events(org: str, count: int, now: datetime, seed: int = 7) -> list[UsageEvent]:
    rng = random.Random(seed)
    month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    earliest = max(month_start, now - timedelta(hours=1))
    span = max(int((now - earliest).total_seconds()) - 1, 1)
    events = []
    for i in range(count):
        when = earliest + timedelta(seconds=rng.randrange(span), microseconds=rng.randrange(10**6))
        team = rng.choice(TEAMS)
        attrs = Attributes(org=org, team=team, project=f"proj-{rng.randrange(4)}",
                           user=f"user-{rng.randrange(12)}")  # fmt: skip
        roll = rng.random()
        payload: Any
        if roll < 0.8:
            provider, model = rng.choice(LLM_MODELS)
            inp = rng.randrange(200, 20_000)
            cached = rng.randrange(0, inp // 2) if rng.random() < 0.4 else 0
            out = rng.randrange(50, 4_000)
            payload = LlmUsage(provider=provider, model=model, input_tokens=inp,
                               cache_read_tokens=cached, output_tokens=out)  # fmt: skip
            source = "llm"
        elif roll < 0.9:
            payload = ApifyRun(actor_id="apify/website-content-crawler", run_id=f"run-{i}",
                               compute_units=Decimal(rng.randrange(1, 400)) / 1000,
                               results=rng.randrange(1, 200))  # fmt: skip
            source = "apify"
        else:
            platform = rng.choice(["n8n", "zapier", "make"])
            payload = WorkflowRun(platform=platform, workflow_id=f"wf-{rng.randrange(5)}",
                                  execution_id=f"exec-{i}", tasks=rng.randrange(1, 20),
                                  operations=rng.randrange(1, 60))  # fmt: skip
            source = "workflow"
        events.append(UsageEvent(event_id=f"{org}-{i:06d}", occurred_at=when, source=source,
                                 attributes=attrs, payload=payload))  # fmt: skip
    return events


def make_plan(org: str, count: int, now: datetime, pricer: Pricer) -> Plan:
    events = synthetic_events(org, count, now)
    costs = {e.event_id: pricer.price(e).total for e in events}
    total = sum(costs.values(), Decimal(0))
    ml = sum((costs[e.event_id] for e in events if e.attributes.team == "ml"), Decimal(0))
    openai = sum((costs[e.event_id] for e in events if e.provider == "openai"), Decimal(0))

    def limit(x: Decimal) -> Decimal:
        return max(x.quantize(Decimal("0.01")), Decimal("0.01"))

    budgets = [
        BudgetDefinition(
            budget_id=f"{org}-org",
            name="all spend",
            limit=limit(total * Decimal("1.12")),
            scope={"org": [org]},
        ),  # fmt: skip
        BudgetDefinition(
            budget_id=f"{org}-team-ml",
            name="team ml",
            parent_id=f"{org}-org",
            limit=limit(ml * Decimal("0.8")),
            scope={"org": [org], "team": ["ml"]},
        ),  # fmt: skip
        BudgetDefinition(
            budget_id=f"{org}-openai",
            name="OpenAI models",
            limit=limit(openai * Decimal("1.6")),
            scope={"org": [org], "provider": ["openai"]},
        ),  # fmt: skip
    ]
    rates = demo_rates(now)
    fx = FxTable([Rate(r.day, r.base, r.quote, r.rate) for r in rates])

    def in_eur(event: UsageEvent) -> Decimal:
        conversion = fx.conversion("USD", "EUR", event.occurred_at.date())
        assert conversion is not None  # the demo publishes every day's rate first
        return from_nanos(conversion.convert(to_nanos(costs[event.event_id])))

    total_eur = sum((in_eur(e) for e in events), Decimal(0))
    # a budget kept in euros: USD spend converts at the ECB-style rate of each event's day
    budgets.append(BudgetDefinition(budget_id=f"{org}-eur", name="all spend, in EUR",
                                    currency="EUR", limit=limit(total_eur * Decimal("1.3")),
                                    scope={"org": [org]}))  # fmt: skip
    validate_hierarchy({b.budget_id: b for b in budgets})
    plan = Plan(org=org, events=events, budgets=budgets, total=total, rates=rates)
    registry = BudgetRegistry(budgets)
    spent: dict[str, Decimal] = defaultdict(Decimal)
    for event in events:
        for match in registry.match(event):
            eur = match.budget.currency == "EUR"
            spent[match.budget.budget_id] += in_eur(event) if eur else costs[event.event_id]
            plan.allocations += 1
    plan.per_budget = dict(spent)
    for b in budgets:
        pct = spent[b.budget_id] * 100 / b.limit
        tiers = [f"threshold:{plain(t.percent)}" for t in b.thresholds if pct >= t.percent]
        if spent[b.budget_id] > b.limit:
            tiers.append("exceeded")
        plan.expected_alerts[b.budget_id] = tiers
    return plan


def demo_rates(now: datetime) -> list[FxRate]:
    """EUR reference rates of the last week up to today, as `spendstream fx publish`
    reads them from the ECB's file (1 EUR = rate USD)."""
    today = now.date()
    return [FxRate(day=today - timedelta(days=d), base="EUR", quote="USD",
                   rate=Decimal("1.0842") + Decimal("0.0013") * d, source="demo")
            for d in range(7)]  # fmt: skip


#: alert kinds the demo predicts exactly (forecasts depend on the day of the month)
TIER_KINDS = ("threshold", "exceeded")
#: the demo's wait for Kafka (``SPENDSTREAM_KAFKA_CHECK_S`` overrides it): it may have just
#: started the local broker
DEMO_BROKER_CHECK_S = 15.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _notify_rules(settings: Settings, org: str, url: str) -> Path:
    """Rules sending this demo's alerts (and no one else's) to the local webhook."""
    path = settings.data_dir / "demo-notify.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "channels:\n"
        "  demo-hook:\n"
        "    type: webhook\n"
        f"    url: {url}\n"
        "    secret: ${SPENDSTREAM_DEMO_HOOK_SECRET}\n"
        "rules:\n"
        f"  - name: this demo's budgets\n    match: {{budget: '{org}-*'}}\n"
        "    channels: [demo-hook]\n"
    )
    return path


def run_demo(
    settings: Settings,
    *,
    events: int,
    timeout: float,
    console: Console,
    keep_running: bool = False,
) -> None:
    from spendstream.localkafka import LocalKafka
    from spendstream.processes import ProcessGroup, wait_for
    from spendstream.producer import UsagePublisher, publish_budgets, publish_rates
    from spendstream.readback import read_alerts, read_statuses
    from spendstream.sinks.warehouse import running_sink_url, sink_warehouse
    from spendstream.topics import ensure_topics, wait_for_broker

    now = datetime.now(UTC)
    org = f"demo-{uuid.uuid4().hex[:6]}"
    pricer = Pricer()
    plan = make_plan(org, events, now, pricer)
    console.rule(f"spendstream demo · organisation [bold]{org}[/bold]")

    kafka = LocalKafka(settings) if settings.uses_local_kafka else None
    started_kafka = False
    if kafka is not None:
        if not kafka.status().get("running"):
            with console.status("starting local Kafka (the first run downloads its jars)..."):
                console.print(kafka.start())
            started_kafka = True
        else:
            console.print(f"using the running local Kafka at {settings.bootstrap_servers}")
    wait_for_broker(settings.bootstrap_servers, settings.kafka_check_s or DEMO_BROKER_CHECK_S)
    ensure_topics(settings)
    if settings.is_embedded_clickhouse and running_sink_url(settings):
        raise DemoError(
            f"a sink already holds {settings.chdb_path}; stop it first, or run the demo with "
            "another SPENDSTREAM_DATA_DIR"
        )

    web_port = _free_port()
    services = ProcessGroup(
        settings,
        SPENDSTREAM_WORKER_WEB_PORT=str(web_port),
        SPENDSTREAM_SINK_QUERY_PORT="0",
    )
    dashboard = dashboard_url(settings.worker_web_bind, web_port)
    hook_secret = secrets.token_urlsafe(24)
    receiver = WebhookReceiver(hook_secret).__enter__()
    try:
        publish_budgets(settings, plan.budgets)
        console.print(f"budgets: {', '.join(b.budget_id for b in plan.budgets)}")
        publish_rates(settings, plan.rates)
        console.print(f"exchange rates: {len(plan.rates)} days of EUR/USD (for {org}-eur)")
        services.start("worker", "worker")
        services.start("sink", "sink")
        rules = _notify_rules(settings, org, receiver.url)
        services.start("notify", "notify", "--rules", str(rules),
                       SPENDSTREAM_DEMO_HOOK_SECRET=hook_secret)  # fmt: skip
        console.print(f"alerts of {org}-* go to a local webhook at {receiver.url} "
                      f"(rules: {rules})", highlight=False)  # fmt: skip
        console.print(f"live dashboard: {dashboard} (while the demo runs"
                      + ("" if keep_running else "; --keep-running keeps it up afterwards")
                      + ")", highlight=False)  # fmt: skip
        with console.status("starting worker and sink..."):
            warehouse = wait_for(
                "the sink's query port", lambda: sink_warehouse(settings), 90, services
            )

        with Progress(console=console) as progress:
            task = progress.add_task("publishing usage events", total=len(plan.events))
            with UsagePublisher(settings) as publisher:
                for event in plan.events:
                    publisher.publish(event)
                    progress.advance(task)
                report = publisher.flush()
            if report.failed:
                raise DemoError(f"{report.failed} events were not delivered: {report.errors[:3]}")

            done = progress.add_task("priced and stored in ClickHouse", total=len(plan.events))

            def stored() -> bool:
                assert warehouse is not None
                n = warehouse.query("SELECT count() FROM priced_usage FINAL WHERE org = {o:String}",
                                    {"o": org}).scalar()  # fmt: skip
                a = warehouse.query("SELECT count() FROM cost_allocations FINAL WHERE org = "
                                    "{o:String}", {"o": org}).scalar()  # fmt: skip
                progress.update(done, completed=int(n))
                return int(n) == len(plan.events) and int(a) == plan.allocations

            wait_for("events to reach ClickHouse", stored, timeout, services)

        def statuses_done() -> list[Any] | None:
            ours = {s.budget_id: s for s in read_statuses(settings) if s.budget_id.startswith(org)}
            if all(ours.get(b) and ours[b].spent == v for b, v in plan.per_budget.items()):
                return list(ours.values())
            return None

        statuses = wait_for("budget status to settle", statuses_done, 60, services)
        expected_alert_count = sum(len(v) for v in plan.expected_alerts.values())

        def alerts_done() -> list[Any] | None:
            ours = [a for a in read_alerts(settings) if a.budget_id.startswith(org)]
            tiers = [a for a in ours if a.kind in TIER_KINDS]
            return ours if len(tiers) >= expected_alert_count else None

        alerts = wait_for("alerts", alerts_done, 60, services) if expected_alert_count else []

        def delivered() -> dict[str, Any] | None:
            got = receiver.received()
            return got if {a.alert_id for a in read_alerts(settings)
                           if a.budget_id.startswith(org)} <= set(got) else None  # fmt: skip

        webhook = wait_for("alerts at the webhook", delivered, 60, services)
        _print_results(console, plan, statuses, alerts, warehouse)
        ours = read_alerts(settings)
        mine = {a.alert_id for a in ours if a.budget_id.startswith(org)}
        if set(webhook) != mine or receiver.rejected:
            raise DemoError(f"the webhook got {sorted(webhook)} ({receiver.rejected} rejected); "
                            f"the alerts topic holds {sorted(mine)}")  # fmt: skip

        def logged() -> bool:
            n = warehouse.query("SELECT uniqExact(alert_id) FROM alert_deliveries WHERE outcome "
                                "= 'delivered' AND startsWith(budget_id, {o:String})",
                                {"o": f"{org}-"}).scalar()  # fmt: skip
            return int(n) == len(mine)

        wait_for("the delivery log in ClickHouse", logged, 30, services)
        console.print(f"[green]✓[/green] {len(webhook)} alerts delivered to the local webhook "
                      "by `spendstream notify`, each once, every signature verified; the "
                      "delivery log in ClickHouse agrees")  # fmt: skip
        if keep_running:
            _keep_running(console, services, dashboard)
    finally:
        with console.status("stopping worker, sink and notify..."):
            services.stop()
        receiver.__exit__()
        if started_kafka and kafka is not None:
            console.print(kafka.stop())


def dashboard_url(bind: str, port: int) -> str:
    """Where a browser on this machine reaches the worker's dashboard."""
    host = "127.0.0.1" if bind in ("", "0.0.0.0", "::", "[::]") else bind
    host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{host}:{port}/dashboard"


def _keep_running(console: Console, services: Any, dashboard: str) -> None:
    """Keep worker, sink and notify up until Ctrl-C, so a person can open the dashboard."""
    import time

    console.print(f"the stack keeps running: open {dashboard} (publish more with "
                  "`spendstream publish`); press Ctrl-C to stop", highlight=False)  # fmt: skip
    try:
        while True:
            services.check_alive()
            time.sleep(1)
    except KeyboardInterrupt:
        console.print("Ctrl-C: stopping")


def _print_results(
    console: Console, plan: Plan, statuses: list[Any], alerts: list[Any], warehouse: Any
) -> None:
    from spendstream.render import status_table

    console.rule("budget status (from the budget-status topic)")
    console.print(status_table(statuses, names=True))

    console.rule("alerts (read back from the budget-alerts topic)")
    table = Table("budget", "alert", "action", "severity", "spent then", "limit")
    for a in sorted(alerts, key=lambda a: (a.budget_id, a.triggered_at)):
        what = f"{plain(a.threshold_percent)}%" if a.threshold_percent else a.kind
        table.add_row(a.budget_name, what, a.action, a.severity, plain(a.spent), plain(a.limit))
    console.print(table)

    console.rule("spend summary (from ClickHouse)")
    summary = warehouse.query(
        "SELECT source, if(provider = '', '-', provider) AS provider, count() AS events, "
        "sum(cost) AS cost FROM priced_usage FINAL WHERE org = {o:String} "
        "GROUP BY source, provider ORDER BY cost DESC",
        {"o": plan.org},
    )
    table = Table(*summary.columns)
    for row in summary.rows:
        table.add_row(*(str(v) for v in row))
    console.print(table)
    ch_total = warehouse.query(
        "SELECT sum(cost) FROM priced_usage FINAL WHERE org = {o:String}", {"o": plan.org}
    ).scalar()
    ch_budget = dict(
        warehouse.query(
            "SELECT budget_id, sum(amount) FROM allocations_in_budget_currency WHERE org = "
            "{o:String} GROUP BY budget_id",
            {"o": plan.org},
        ).rows
    )

    problems = []
    if Decimal(ch_total) != plan.total:
        problems.append(f"ClickHouse total {ch_total} != published total {plan.total}")
    by_status = {s.budget_id: s.spent for s in statuses}
    for budget_id, expected in plan.per_budget.items():
        if by_status.get(budget_id) != expected or Decimal(ch_budget.get(budget_id, 0)) != expected:
            problems.append(f"budget {budget_id}: stream {by_status.get(budget_id)}, "
                            f"ClickHouse {ch_budget.get(budget_id)}, expected {expected}")  # fmt: skip
    for budget_id, tiers in plan.expected_alerts.items():
        got = sorted(a.alert_id.removeprefix(f"{budget_id}:") for a in alerts
                     if a.budget_id == budget_id and a.kind in TIER_KINDS)  # fmt: skip
        want = sorted(f"{_period_key(statuses, budget_id)}:{t}" for t in tiers)
        if got != want:
            problems.append(f"budget {budget_id}: alerts {got}, expected {want}")
    console.rule("checks")
    console.print(f"published {len(plan.events)} events costing {plan.total} USD")
    if problems:
        raise DemoError("demo results do not add up:\n  " + "\n  ".join(problems))
    console.print(f"[green]✓[/green] ClickHouse total {ch_total} USD equals the published total")
    console.print(f"[green]✓[/green] {len(plan.per_budget)} budgets: stream state, ClickHouse "
                  "and input agree to the nano-unit (the EUR budget's USD spend converted at "
                  "each day's rate)")  # fmt: skip
    tiered = [a for a in alerts if a.kind in TIER_KINDS]
    others = len(alerts) - len(tiered)
    console.print(f"[green]✓[/green] {len(tiered)} threshold alerts: exactly one per crossed tier"
                  + (f" (+{others} forecast/anomaly)" if others else ""))  # fmt: skip


def _period_key(statuses: list[Any], budget_id: str) -> str:
    return next(s.period_key for s in statuses if s.budget_id == budget_id)
