"""The ``spendstream`` command. Every failure ends in one clear message, never a traceback."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import click
import typer
from rich.console import Console, RenderableType
from rich.table import Table

from spendstream.config import ConfigError, Settings, load_settings
from spendstream.errors import SpendstreamError, UserError
from spendstream.schemas.money import plain
from spendstream.sources import WIRE_KINDS, sources

if TYPE_CHECKING:
    from datetime import datetime

    from spendstream.streams.budget_feed import BudgetFeed

app = typer.Typer(
    help="Stream processor for AI and API spend: price usage, match budgets, alert, analyse.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
kafka_app = typer.Typer(help="The local Kafka broker (no Docker needed).", no_args_is_help=True)
budgets_app = typer.Typer(help="Budget definitions.", no_args_is_help=True)
topics_app = typer.Typer(help="Kafka topics.", no_args_is_help=True)
alerts_app = typer.Typer(
    help="Budget alerts: list, follow (tail), acknowledge, resolve.", no_args_is_help=True
)
app.add_typer(alerts_app, name="alerts")
app.add_typer(kafka_app, name="kafka")
app.add_typer(budgets_app, name="budgets")
app.add_typer(topics_app, name="topics")
fx_app = typer.Typer(
    help="Exchange rates for budgets in another currency than the spend.", no_args_is_help=True
)
app.add_typer(fx_app, name="fx")

console = Console()
err = Console(stderr=True)
T = TypeVar("T")


class CliError(UserError):
    """An error whose message is the whole story for the user."""


def _settings() -> Settings:
    settings = load_settings()
    from spendstream.schemas.avro import configure_registry

    configure_registry(settings.schema_registry_url or None)
    logging.basicConfig(
        level=getattr(logging, settings.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if settings.log_level != "DEBUG":
        # librdkafka reports transient, retried conditions as warnings; show errors only
        logging.getLogger("spendstream.kafka").setLevel(logging.ERROR)
    return settings


def _run(action: Callable[[], T]) -> T:
    """Run a command body, turning every known failure into a message and exit code 1."""
    try:
        return action()
    except SpendstreamError as exc:
        # one line, unwrapped: a message to read, grep and paste, whatever the terminal width
        err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        err.print("interrupted")
        raise typer.Exit(130) from None
    except click.exceptions.Abort:  # a prompt that got no answer (Ctrl-D, no terminal)
        err.print("[red]error:[/red] aborted: nothing was changed", highlight=False)
        raise typer.Exit(1) from None
    except typer.Exit:
        raise
    except Exception as exc:  # last resort: still no bare traceback
        err.print(
            f"[red]unexpected error:[/red] {type(exc).__name__}: {exc}\n"
            "Set SPENDSTREAM_LOG_LEVEL=DEBUG for details and report it if it persists.",
            highlight=False,
        )
        if logging.getLogger().isEnabledFor(logging.DEBUG):
            logging.exception("details")
        raise typer.Exit(2) from None


# --- kafka ---------------------------------------------------------------------------------
@kafka_app.command("start")
def kafka_start() -> None:
    """Resolve the Kafka jars via Maven (once), format KRaft storage, start one broker."""

    def body() -> None:
        from spendstream.localkafka import LocalKafka
        from spendstream.topics import ensure_topics

        settings = _settings()
        with console.status("starting local Kafka (first run downloads the jars)..."):
            message = LocalKafka(settings).start()
            created = ensure_topics(settings)
        console.print(message)
        if created:
            console.print(f"created topics: {', '.join(created)}")

    _run(body)


@kafka_app.command("stop")
def kafka_stop() -> None:
    """Stop the local broker."""

    def body() -> None:
        from spendstream.localkafka import LocalKafka

        console.print(LocalKafka(_settings()).stop())

    _run(body)


@kafka_app.command("status")
def kafka_status() -> None:
    """Show whether the local broker runs, where, and its version."""

    def body() -> None:
        from spendstream.localkafka import LocalKafka

        status = LocalKafka(_settings()).status()
        for key, value in status.items():
            console.print(f"{key:12} {value}")
        if not status.get("running"):
            raise typer.Exit(3)

    _run(body)


@topics_app.command("create")
def topics_create() -> None:
    """Create every topic (compacted where needed); existing ones are left alone."""

    def body() -> None:
        from spendstream.topics import ensure_topics, wait_for_broker

        settings = _settings()
        wait_for_broker(settings.bootstrap_servers, 60)
        created = ensure_topics(settings)
        console.print(f"created: {', '.join(created) or 'nothing (all exist)'}")

    _run(body)


# --- services ------------------------------------------------------------------------------
@app.command()
def worker(
    stage: Annotated[str | None, typer.Option(hidden=True, help="Internal: run one stage.")] = None,
) -> None:
    """Run a stream worker: the price stage (price, dedupe, match) and the aggregator
    (spend per budget and period, alerts, status, HTTP API), each a supervised process
    started again if it crashes. Run several workers for scale-out (same groups)."""

    def body() -> None:
        import os

        settings = _settings()
        if stage is None:
            from spendstream.processes import supervise
            from spendstream.topics import ensure_topics, wait_for_broker

            wait_for_broker(settings.bootstrap_servers, 60)
            ensure_topics(settings)  # before either stage: no stage races topic creation
            if settings.budgets_file:
                from spendstream.budget_history import default_actor
                from spendstream.producer import publish_budgets
                from spendstream.schemas.budget import load_budgets_file

                budgets = load_budgets_file(settings.budgets_file)
                publish_budgets(settings, budgets, actor=default_actor(),
                                note="SPENDSTREAM_BUDGETS_FILE at worker start")  # fmt: skip
                logging.getLogger("spendstream").info("published %d budgets", len(budgets))
            me = [sys.executable, "-m", "spendstream.cli", "worker", "--stage"]
            env = {**os.environ, "SPENDSTREAM_WORKER_CHILD": "1"}
            code = supervise({"price": [*me, "price"], "aggregate": [*me, "aggregate"]}, env)
            raise typer.Exit(code)
        if stage == "price":
            from spendstream.streams.price_worker import run_price_worker

            run_price_worker(settings)
            return
        if stage != "aggregate":
            raise CliError(f"unknown stage '{stage}': price or aggregate")
        from faust import Worker

        from spendstream.streams.app import create_worker

        aggregator = create_worker(settings)
        aggregator.start_feed()
        sys.argv = [sys.argv[0]]
        Worker(
            aggregator.app, loglevel=settings.log_level.lower(), quiet=True
        ).execute_from_commandline()

    _run(body)


@app.command()
def sink(
    idle_exit: Annotated[
        float | None, typer.Option(help="Exit after this many idle seconds (tests, backfills).")
    ] = None,
) -> None:
    """Run the ClickHouse sink (and, with chDB, the loopback query port)."""

    def body() -> None:
        settings = _settings()
        from spendstream.sinks.service import run_sink
        from spendstream.topics import ensure_topics, wait_for_broker

        wait_for_broker(settings.bootstrap_servers, 60)
        ensure_topics(settings)
        stats = run_sink(settings, idle_exit_s=idle_exit)
        console.print(f"sink stopped: rows {dict(stats.rows)}, replays skipped "
                      f"{stats.skipped_replays}, poison {stats.poison}")  # fmt: skip

    _run(body)


@app.command()
def notify(
    rules: Annotated[
        Path | None,
        typer.Option(help="Rules file (default: SPENDSTREAM_NOTIFY_RULES).", show_default=False),
    ] = None,
    check: Annotated[
        bool, typer.Option("--check", help="Only check the rules file and list its routes.")
    ] = False,
    idle_exit: Annotated[
        float | None, typer.Option(help="Exit after this many idle seconds (tests, backfills).")
    ] = None,
) -> None:
    """Deliver budget alerts to webhooks, Slack and email by routing rules, with retries,
    rate limits, digests and a delivery log (alert-deliveries, alerts.dlq)."""

    def body() -> None:
        from spendstream.sinks.notify.config import load_config

        settings = _settings()
        path = rules or settings.notify_rules
        if path is None:
            raise CliError(
                "no rules file: pass --rules FILE or set SPENDSTREAM_NOTIFY_RULES "
                "(README, section 'Alert delivery', has an example)"
            )
        config = load_config(path)
        if check:
            for name, channel in sorted(config.channels.items()):
                console.print(f"channel {name}: {channel.type}", highlight=False)
            for i, rule in enumerate(config.rules):
                what = "no other rule matched" if rule.default else rule.match.describe()
                console.print(f"rule {i} {rule.name!r}: {what} -> {', '.join(rule.channels)}",
                              highlight=False, soft_wrap=True)  # fmt: skip
            return
        from spendstream.sinks.notify.service import NotifyService
        from spendstream.topics import ensure_topics, wait_for_broker

        wait_for_broker(settings.bootstrap_servers, 60)
        ensure_topics(settings)
        service = NotifyService(settings, config)
        service.install_signal_handlers()
        stats = service.run(idle_exit_s=idle_exit)
        console.print(f"notify stopped: {stats}", highlight=False)

    _run(body)


@app.command("status")
def status_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object, for machines.")] = False,
) -> None:
    """Health at a glance: Kafka reachable, worker and sink consumer lag per topic, the
    sink's writer, the last alert. Exit code 1 when Kafka cannot be reached.

    Lag is the records a group has not committed (a group that never committed lags by
    the whole topic); in --json a topic that does not exist has lag null."""

    def body() -> None:
        from confluent_kafka import KafkaError, KafkaException

        from spendstream.readback import decode_alert, read_newest
        from spendstream.topics import (
            sink_group,
            sink_inputs,
            topic_lags,
            wait_for_broker,
            worker_group,
            worker_lags,
        )

        settings = _settings()
        address = settings.bootstrap_servers
        wait_for_broker(address, BROKER_CHECK_S)
        try:
            worker_lag = worker_lags(settings)
            sink_lag = topic_lags(settings, sink_group(settings), sink_inputs(settings))
            alert = read_newest(settings, settings.topics.alerts, decode_alert)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            reason = error.str() if isinstance(error, KafkaError) else str(exc)
            raise CliError(f"Kafka at {address} stopped answering: {reason}") from None
        report = {
            "broker": {"address": address, "reachable": True},
            "worker": {"group": worker_group(settings), "lag": worker_lag,
                       "total_lag": sum(v or 0 for v in worker_lag.values()),
                       "http": _worker_http(settings)},
            "sink": {"group": sink_group(settings), "lag": sink_lag,
                     "total_lag": sum(v or 0 for v in sink_lag.values()),
                     **_sink_process(settings)},
            "last_alert": None if alert is None else {
                "alert_id": alert.alert_id, "budget_id": alert.budget_id, "kind": alert.kind,
                "triggered_at": alert.triggered_at.isoformat(), "message": alert.message},
        }  # fmt: skip
        if as_json:
            print(json.dumps(report, indent=2))
            return
        _print_status(report)

    _run(body)


def _worker_http(settings: Settings) -> dict[str, Any]:
    """Whether a worker answers on the configured web port (lag alone cannot tell an idle
    pipeline from a stopped one)."""
    from spendstream.processes import worker_metrics

    metrics = worker_metrics(settings.worker_web_port)
    return {"port": settings.worker_web_port, "answering": metrics is not None}


def _sink_process(settings: Settings) -> dict[str, Any]:
    """The sink as ``sink.json`` and its ``GET /health`` describe it (embedded ClickHouse);
    with a server the sink has no port to ask."""
    if not settings.is_embedded_clickhouse:
        return {"running": None, "note": "ClickHouse server: the sink has no query port; "
                "see its lag"}  # fmt: skip
    from spendstream.sinks.warehouse import SinkWarehouse, running_sink

    endpoint = running_sink(settings)
    if endpoint is None:
        return {"running": False}
    health = SinkWarehouse(endpoint.url, endpoint.token).health()
    return {"running": True, "pid": endpoint.pid, "port": endpoint.port, "health": health}


def _print_status(report: dict[str, Any]) -> None:
    worker, sink = report["worker"], report["sink"]
    console.print(f"broker      reachable at {report['broker']['address']}", highlight=False)
    http = worker["http"]
    console.print(f"worker      group {worker['group']}; HTTP on port {http['port']}: "
                  + ("answering" if http["answering"] else "not answering"),
                  highlight=False)  # fmt: skip
    if sink["running"] is None:
        state = sink["note"]
    elif not sink["running"]:
        state = "not running"
    else:
        health = sink["health"]
        verdict = "healthy" if health.get("ok") else "NOT healthy"
        said = ", ".join(f"{k} {v}" for k, v in health.items() if k != "ok")  # what it says
        state = f"running (pid {sink['pid']}, port {sink['port']}); {verdict}: {said}"
    console.print(f"sink        group {sink['group']}; {state}", highlight=False, markup=False)
    table = Table("topic", "worker lag", "sink lag", title="consumer lag (records not committed)")
    topics = list(dict.fromkeys([*worker["lag"], *sink["lag"]]))

    def cell(lags: dict[str, int | None], topic: str) -> str:
        if topic not in lags:
            return ""
        return "missing" if lags[topic] is None else str(lags[topic])

    for topic in topics:
        table.add_row(topic, cell(worker["lag"], topic), cell(sink["lag"], topic))
    table.add_row("[bold]total[/bold]", str(worker["total_lag"]), str(sink["total_lag"]))
    console.print(table)
    if None in [*worker["lag"].values(), *sink["lag"].values()]:
        console.print("missing topics: create them with `spendstream topics create` (a worker "
                      "or the sink also does at start)")  # fmt: skip
    alert = report["last_alert"]
    if alert is None:
        console.print("last alert  none")
    else:
        console.print(f"last alert  {alert['alert_id']} at {alert['triggered_at']}: "
                      f"{alert['message']}", highlight=False, markup=False)  # fmt: skip


# --- budgets -------------------------------------------------------------------------------
ActorOption = Annotated[
    str | None,
    typer.Option("--actor", help="Who makes this change, recorded with it (default: the OS "
                 "user).", show_default=False),
]  # fmt: skip
NoteOption = Annotated[
    str | None,
    typer.Option("--note", help="Why, recorded with the change (see `budgets history`).",
                 show_default=False),
]  # fmt: skip


def _who(actor: str | None, note: str | None) -> tuple[str, str | None]:
    """The actor (``--actor``, else the OS user) and note a change records, checked."""
    from spendstream.budget_history import default_actor

    who = default_actor() if actor is None else actor.strip()
    if not who or len(who) > 256:
        raise CliError("--actor must be 1 to 256 characters")
    why = (note or "").strip() or None
    if why is not None and len(why) > 2000:
        raise CliError("--note must be at most 2000 characters")
    return who, why


@budgets_app.command("apply")
def budgets_apply(file: Path, actor: ActorOption = None, note: NoteOption = None) -> None:
    """Validate budgets from a YAML/JSON file and publish them to the budgets topic.

    Each budget's new version records --actor (default: the OS user) and --note (a
    budget in the file may carry its own note; --note replaces it)."""

    def body() -> None:
        from spendstream.producer import publish_budgets
        from spendstream.schemas.budget import load_budgets_file
        from spendstream.topics import ensure_topics, wait_for_broker

        settings = _settings()
        who, why = _who(actor, note)
        load_budgets_file(file, hierarchy=False)  # file errors first, before waiting for Kafka
        wait_for_broker(settings.bootstrap_servers, 30)
        ensure_topics(settings)
        # a file may name parents defined earlier: check the hierarchy with what is live
        live = {b.budget_id: b for b in _read_budgets(settings).registry.all()}
        budgets = load_budgets_file(file, known=live)
        publish_budgets(settings, budgets, actor=who, note=why)
        console.print(f"applied {len(budgets)} budgets: {', '.join(b.budget_id for b in budgets)}")

    _run(body)


def _read_budgets(settings: Settings, *, follow_status: bool = False) -> BudgetFeed:
    """Read the compacted topics to their end; returns the feed (registry, statuses)."""
    from spendstream.streams.budget_feed import BudgetFeed

    feed = BudgetFeed(settings, follow_status=follow_status, fetch_wait_ms=20)
    feed.start()
    if not feed.caught_up.wait(30):
        raise CliError("could not read the budgets topics within 30 s: is Kafka running?")
    feed.stop()
    if feed.error:
        raise CliError(f"{feed.error}: run `spendstream topics create` or apply budgets first")
    return feed


@budgets_app.command("list")
def budgets_list() -> None:
    """List the budgets currently defined (read from the budgets topic)."""

    def body() -> None:
        settings = _settings()
        registry = _read_budgets(settings).registry
        table = Table("id", "name", "parent", "limit", "period", "tz", "scope")
        for b in sorted(registry.all(), key=lambda b: b.budget_id):
            table.add_row(b.budget_id, b.name, b.parent_id or "", f"{plain(b.limit)} "
                          f"{b.currency}", b.period, b.timezone, json.dumps(b.scope))  # fmt: skip
        console.print(table)

    _run(body)


@budgets_app.command("show")
def budgets_show(
    budget_id: str,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """One budget's definition, its children and its latest status."""

    def body() -> None:
        from spendstream.streams.api import dump

        settings = _settings()
        feed = _read_budgets(settings, follow_status=True)
        budget = feed.registry.get(budget_id)
        if budget is None:
            raise CliError(f"no budget '{budget_id}' (see `spendstream budgets list`)")
        children = sorted(b.budget_id for b in feed.registry.all() if b.parent_id == budget_id)
        statuses = [s for s in feed.statuses.values() if s.budget_id == budget_id]
        if as_json:
            print(json.dumps({"budget": dump(budget), "children": children,
                              "status": [dump(s) for s in statuses]}, indent=2))  # fmt: skip
            return
        console.print(f"[bold]{budget.name}[/bold] ({budget.budget_id})")
        console.print(f"  limit       {plain(budget.limit)} {budget.currency} {budget.period}"
                      f" ({budget.timezone})")  # fmt: skip
        console.print(f"  parent      {budget.parent_id or '-'}")
        changed = f"{budget.updated_at:%Y-%m-%d %H:%M} UTC by {budget.actor or '(unknown)'}"
        console.print(f"  changed     {changed}" + (f": {budget.note}" if budget.note else "")
                      + f" (`budgets history {budget.budget_id}`)", highlight=False)  # fmt: skip
        console.print(f"  children    {', '.join(children) or '-'}")
        console.print(f"  scope       {json.dumps(budget.scope)}")
        tiers = ", ".join(f"{plain(t.percent)}% {t.action}"
                          + (f" -> {t.downgrade_to}" if t.downgrade_to else "")
                          for t in budget.thresholds)  # fmt: skip
        console.print(f"  thresholds  {tiers}")
        if budget.allocations:
            console.print(
                f"  allocations {', '.join(f'{k} {plain(v)}' for k, v in budget.allocations.items())}"
            )
        if statuses:
            console.print(status_detail(statuses, feed.resolved()))

    _run(body)


@budgets_app.command("delete")
def budgets_delete(
    budget_id: str,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
    actor: ActorOption = None,
    note: NoteOption = None,
) -> None:
    """Delete a budget: matching stops; its spend history stays in ClickHouse.

    The deletion is a tombstone on the budgets topic; --actor (default: the OS user) and
    --note go with it as record headers, and `budgets history` shows them."""

    def body() -> None:
        from spendstream.producer import publish_budgets

        if not yes and not sys.stdin.isatty():
            # no terminal to ask on: refuse before touching anything, and say the way out
            raise CliError(f"not deleted: pass --yes to delete budget '{budget_id}' without a "
                           "prompt (no terminal to ask on)")  # fmt: skip
        settings = _settings()
        who, why = _who(actor, note)
        registry = _read_budgets(settings).registry
        if registry.get(budget_id) is None:
            raise CliError(f"no budget '{budget_id}' (see `spendstream budgets list`)")
        children = sorted(b.budget_id for b in registry.all() if b.parent_id == budget_id)
        if children:
            raise CliError(f"budget '{budget_id}' has children {children}: delete or re-parent "
                           "them first")  # fmt: skip
        if not yes and not typer.confirm(f"delete budget '{budget_id}'?"):
            raise CliError("not deleted")
        publish_budgets(settings, [], delete=[budget_id], actor=who, note=why)
        console.print(f"deleted {budget_id}: new events no longer count toward it; its history "
                      "stays")  # fmt: skip

    _run(body)


@budgets_app.command("history")
def budgets_history(
    budget_id: str,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object, for machines.")] = False,
) -> None:
    """Every version of a budget, oldest first: when, who (actor), why (note) and what
    changed against the version before (limit 100 -> 150, thresholds, scope ...),
    deletions included.

    Versions come from the budgets topic and from ClickHouse's budget_history (the sink
    stores every version it reads). The topic is compacted: Kafka keeps each budget's
    newest record, so older versions may be gone from it; without ClickHouse (no sink has
    run, or it is unreachable) only what the topic still holds is shown, and the output
    says so."""

    def body() -> None:
        import re

        from spendstream import budget_history as bh
        from spendstream.schemas.budget import BUDGET_ID_PATTERN
        from spendstream.topics import TopicsError, wait_for_broker

        if not re.fullmatch(BUDGET_ID_PATTERN, budget_id):
            raise CliError(f"'{budget_id}' is not a budget id (letters, digits, '.', '_', '-')")
        settings = _settings()
        wait_for_broker(settings.bootstrap_servers, 30)  # quietly, and says what to do
        try:
            on_topic, notes = bh.topic_versions(settings, budget_id)
        except TopicsError as exc:
            raise CliError(f"{exc}: is Kafka running?") from None
        stored, problem = bh.warehouse_versions(settings, budget_id)
        notes.append(bh.COMPACTION_NOTE)
        if problem:
            notes.append(f"ClickHouse not read ({problem}): only the versions still on the "
                         "budgets topic are shown")  # fmt: skip
        versions = bh.merge_versions(on_topic, stored)
        if not versions:
            raise CliError(f"no budget '{budget_id}' in the history: it was never applied, or "
                           "its versions are gone from the topic and not in ClickHouse "
                           "(see `spendstream budgets list`)")  # fmt: skip
        entries = bh.history(versions)
        if as_json:
            print(json.dumps(bh.history_json(budget_id, entries, notes), indent=2))
            return
        console.print(bh.history_table(budget_id, entries))
        for line in notes:
            console.print(f"note: {line}", style="dim", highlight=False, soft_wrap=True)

    _run(body)


@budgets_app.command("status")
def budgets_status(
    budget_id: Annotated[str | None, typer.Argument(help="Only this budget.")] = None,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch", "-w", help="Keep the view open, updated as statuses arrive (Ctrl-C ends)."
        ),
    ] = False,
    interval: Annotated[
        float, typer.Option("--interval", help="Seconds between refreshes of --watch.")
    ] = 2.0,
) -> None:
    """Latest status per budget and period (from the budget-status topic); with an id, the
    detail: burn rate, projection with its 95% band, days left, active alerts."""

    def body() -> None:
        settings = _settings()
        if watch:
            if not 0.1 <= interval <= 3600:
                raise CliError(f"--interval must be between 0.1 and 3600 seconds, not {interval}")
            _watch_statuses(settings, budget_id, interval)
            return
        feed = _read_budgets(settings, follow_status=True)
        statuses = list(feed.statuses.values())
        if budget_id:
            statuses = [s for s in statuses if s.budget_id == budget_id]
            if not statuses:
                raise CliError(f"no status for budget '{budget_id}' yet")
            console.print(status_detail(statuses, feed.resolved()))
            return
        console.print(status_table(statuses))

    _run(body)


def _watch_statuses(settings: Settings, budget_id: str | None, interval: float) -> None:
    """``budgets status --watch``: one feed follows the status topic in its background
    thread (``BudgetFeed`` keeps consuming after it caught up, and its statuses are safe to
    read from another thread); the view is rendered again every ``interval`` seconds. On a
    terminal that is a rich ``Live`` view; otherwise (a pipe, a file) a new snapshot is
    printed whenever the figures change. Ctrl-C ends it quietly with exit code 0."""
    import time

    from rich.live import Live

    from spendstream.streams.budget_feed import BudgetFeed

    # a follower, not a one-shot reader: empty fetches wait longer than _read_budgets' 20 ms
    feed = BudgetFeed(settings, follow_status=True, fetch_wait_ms=100)

    def view() -> RenderableType:
        statuses = feed.statuses.values()
        if budget_id:
            statuses = [s for s in statuses if s.budget_id == budget_id]
        return status_view(statuses, resolved=feed.resolved(), budget_id=budget_id)

    def figures() -> list[Any]:  # what a snapshot shows, without the clock
        return sorted(
            (s.budget_id, s.period_key, s.spent, s.limit, s.state, s.event_count)
            for s in feed.statuses.values()
            if not budget_id or s.budget_id == budget_id
        )

    try:
        feed.start()
        if not feed.caught_up.wait(30):
            raise CliError("could not read the budgets topics within 30 s: is Kafka running?")
        if feed.error:
            raise CliError(f"{feed.error}: run `spendstream topics create` or apply budgets first")
        if console.is_terminal:
            with Live(view(), console=console, auto_refresh=False) as live:
                while feed.is_alive():
                    time.sleep(interval)
                    live.update(view(), refresh=True)
        else:
            shown: list[Any] | None = None
            while feed.is_alive():
                if (current := figures()) != shown:
                    console.print(view())
                    console.file.flush()
                    shown = current
                time.sleep(interval)
        raise CliError("stopped following the budget-status topic (see the log above)")
    except KeyboardInterrupt:  # how a watch is meant to end: quietly, exit 0
        pass
    finally:
        feed.stop()
        feed.join(5)


#: the states the --watch header counts, most severe last
WATCHED_STATES = ("warning", "critical", "exceeded")


def status_view(
    statuses: list[Any],
    *,
    resolved: set[str] | None = None,
    budget_id: str | None = None,
    now: datetime | None = None,
) -> RenderableType:
    """What ``budgets status --watch`` shows: a header line (time, budgets, how many are in
    each alerting state, judged by each budget's latest period) over the same table as
    ``budgets status`` (or, for one budget, its detail)."""
    from datetime import UTC, datetime

    from rich.console import Group
    from rich.text import Text

    latest: dict[str, Any] = {}
    for s in statuses:
        if s.budget_id not in latest or s.period_start > latest[s.budget_id].period_start:
            latest[s.budget_id] = s
    counts = {state: sum(s.state == state for s in latest.values()) for state in WATCHED_STATES}
    stamp = (now or datetime.now(UTC)).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    header = Text.assemble(
        (stamp, "bold"),
        f"  {len(latest)} budget{'' if len(latest) == 1 else 's'}: ",
        (f"{counts['warning']} warning", "yellow" if counts["warning"] else ""),
        ", ",
        (f"{counts['critical']} critical", "red" if counts["critical"] else ""),
        ", ",
        (f"{counts['exceeded']} exceeded", "bold red" if counts["exceeded"] else ""),
    )
    if not statuses:
        what = f"budget '{budget_id}'" if budget_id else "any budget"
        body: RenderableType = Text(f"no status for {what} yet; waiting for the workers...")
    elif budget_id:
        body = status_detail(statuses, resolved or set())
    else:
        body = status_table(statuses)
    return Group(header, body)


def status_detail(statuses: list[Any], resolved: set[str]) -> Table:
    """One column per period, one row per figure (fits a narrow terminal)."""
    ordered = sorted(statuses, key=lambda s: s.period_start)
    table = Table("", *[s.period_key for s in ordered], title=f"status of {ordered[0].budget_id}")

    def money(v: Decimal | None) -> str:
        return plain(v.quantize(Decimal("0.0001"))) if v is not None else "-"

    def days(v: Decimal | None, none: str = "-") -> str:
        return plain(v) if v is not None else none

    rows: list[tuple[str, Callable[[Any], str]]] = [
        ("spent", lambda s: f"{plain(s.spent)} {s.currency}"),
        ("limit", lambda s: plain(s.limit)),
        ("used", lambda s: f"{s.percent}% ({s.state})"),
        ("remaining", lambda s: plain(s.remaining)),
        ("events", lambda s: str(s.event_count)),
        ("burn rate / day", lambda s: money(s.burn_rate_per_day)),
        ("projected total", lambda s: money(s.projected_total)),
        ("95% band", lambda s: f"{money(s.projected_low)} - {money(s.projected_high)}"),
        ("days left", lambda s: days(s.days_left)),
        ("days to limit", lambda s: days(s.days_to_limit, "never")),
        ("active alerts", lambda s: "\n".join(a.split(":", 2)[-1] for a in s.active_alerts
                                              if a not in resolved) or "-"),
    ]  # fmt: skip
    for label, fn in rows:
        table.add_row(label, *[fn(s) for s in ordered])
    return table


# --- pre-flight check ---------------------------------------------------------------------
#: exit codes of `spendstream check`, so scripts can branch on the answer
CHECK_EXIT = {"allow": 0, "warn": 0, "downgrade": 10, "throttle": 11, "block": 12}


@app.command("check")
def check_cmd(
    cost: Annotated[str | None, typer.Option(help="Estimated cost, e.g. 0.25.")] = None,
    currency: Annotated[str, typer.Option(help="Currency of --cost.")] = "USD",
    source: Annotated[str, typer.Option(help=f"{', '.join(WIRE_KINDS)}.")] = "llm",
    provider: Annotated[str | None, typer.Option(help="LLM provider (to price tokens).")] = None,
    model: Annotated[str | None, typer.Option(help="LLM model (to price tokens).")] = None,
    input_tokens: Annotated[int, typer.Option(help="Estimated input tokens.")] = 0,
    output_tokens: Annotated[int, typer.Option(help="Estimated output tokens.")] = 0,
    attr: Annotated[
        list[str] | None, typer.Option(help="Attribute or tag as key=value (repeatable).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the answer as JSON.")] = False,
) -> None:
    """Pre-flight: may I spend this? Answers allow / warn / downgrade / throttle / block with
    the reason from every matching budget and ancestor. Exit code 0 for allow and warn,
    10 downgrade, 11 throttle, 12 block."""

    def body() -> str:
        from datetime import UTC, datetime

        from pydantic import ValidationError

        from spendstream.schemas.checks import CheckRequest
        from spendstream.schemas.models import Attributes, explain
        from spendstream.streams.api import dump
        from spendstream.streams.preflight import check, spent_from
        from spendstream.streams.pricing import Catalog, Pricer

        attrs: dict[str, Any] = {"tags": {}}
        for item in attr or []:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise CliError(f"--attr '{item}' is not key=value")
            if key in Attributes.model_fields and key != "tags":
                attrs[key] = value
            else:
                attrs["tags"][key] = value
        try:
            request = CheckRequest.model_validate({
                "estimated_cost": cost, "currency": currency, "source": source,
                "provider": provider, "model": model, "input_tokens": input_tokens,
                "output_tokens": output_tokens, "attributes": attrs,
            })  # fmt: skip
        except ValidationError as exc:
            raise CliError(explain(exc, "check")) from None
        settings = _settings()
        feed = _read_budgets(settings, follow_status=True)
        pricer = Pricer(Catalog.for_settings(settings.price_catalog))
        result = check(request, feed.registry, spent_from(feed.statuses), pricer,
                       datetime.now(UTC), feed.fx)  # fmt: skip
        if as_json:
            print(json.dumps(dump(result), indent=2))
            return result.decision
        colour = {"allow": "green", "warn": "yellow"}.get(result.decision, "red")
        console.print(f"[{colour}]{result.decision}[/{colour}]"
                      + (f" -> {result.downgrade_to}" if result.downgrade_to else "")
                      + f"  (estimated {plain(result.estimated_cost)} {result.currency}): "
                      + result.reason, highlight=False)  # fmt: skip
        for v in result.budgets:
            console.print(f"  {v.decision:9} {v.reason}", highlight=False)
        return result.decision

    decision = _run(body)
    raise typer.Exit(CHECK_EXIT[decision])


# --- alerts --------------------------------------------------------------------------------
@alerts_app.command("list")
def alerts_list(
    budget_id: Annotated[str | None, typer.Option("--budget", help="Only this budget.")] = None,
    open_only: Annotated[bool, typer.Option("--open", help="Hide resolved alerts.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """Alerts read back from the budget-alerts topic, with their acknowledgement state."""

    def body() -> None:
        from spendstream.readback import read_alerts
        from spendstream.streams.api import dump

        settings = _settings()
        feed = _read_budgets(settings, follow_status=True)
        table = Table("alert id", "kind", "state", "message")
        table.columns[0].no_wrap = True
        for a in sorted(read_alerts(settings), key=lambda a: a.triggered_at):
            if budget_id and a.budget_id != budget_id:
                continue
            act = feed.actions.get(a.alert_id)
            state = {"acknowledge": "acknowledged", "resolve": "resolved"}.get(
                act.action if act else "", "open")  # fmt: skip
            if open_only and state == "resolved":
                continue
            if as_json:
                print(json.dumps({**dump(a), "state": state}))
            else:
                table.add_row(a.alert_id, a.kind, state, a.message)
        if not as_json:
            console.print(table)

    _run(body)


#: the alert kinds (``BudgetAlert.kind``)
ALERT_KINDS = ("threshold", "exceeded", "forecast", "anomaly")
SEVERITY_STYLE = {"info": "cyan", "warning": "yellow", "critical": "bold red"}


def alert_filter(budget: str | None, kinds: list[str] | None) -> Callable[[Any], bool]:
    """Whether an alert is wanted: ``budget`` an exact id or a glob with ``*`` and ``?``,
    ``kinds`` any of these kinds (none: all). Raises CliError for an unknown kind."""
    import fnmatch

    unknown = sorted(set(kinds or ()) - set(ALERT_KINDS))
    if unknown:
        raise CliError(f"unknown --kind {', '.join(unknown)}: use {'|'.join(ALERT_KINDS)}")
    wanted = set(kinds or ALERT_KINDS)
    glob = budget is not None and any(c in budget for c in "*?")

    def matches(alert: Any) -> bool:
        if alert.kind not in wanted:
            return False
        if budget is None:
            return True
        if glob:
            return fnmatch.fnmatchcase(alert.budget_id, budget)
        return bool(alert.budget_id == budget)

    return matches


def alert_line(alert: Any) -> Any:
    """One alert as one line of rich Text: time (UTC), severity, kind, budget, spend, message."""
    from datetime import UTC

    from rich.text import Text

    percent = (
        f"{(alert.spent * 100 / alert.limit).quantize(Decimal('0.01'))}%" if alert.limit else "-"
    )
    when = alert.triggered_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    return Text.assemble(
        (when, "dim"),
        " ",
        (f"{alert.severity:8}", SEVERITY_STYLE.get(alert.severity, "")),
        " ",
        f"{alert.kind:9}",
        " ",
        (alert.budget_id, "bold"),
        f" {plain(alert.spent)}/{plain(alert.limit)} {alert.currency} ({percent}) ",
        alert.message,
    )


@alerts_app.command("tail")
def alerts_tail(
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep waiting for new alerts (Ctrl-C ends).")
    ] = False,
    budget_id: Annotated[
        str | None, typer.Option("--budget", help="Only this budget id, or a glob (* ?).")
    ] = None,
    kinds: Annotated[
        list[str] | None,
        typer.Option("--kind", help="Only this kind (repeatable): " + "|".join(ALERT_KINDS)),
    ] = None,
    last: Annotated[
        int | None,
        typer.Option("--last", help="Start N records before the end of each partition."),
    ] = None,
    from_start: Annotated[
        bool, typer.Option("--from-start", help="Start at the beginning (the default).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """Alerts as they arrive on the budget-alerts topic, like `tail -f`."""

    def body() -> None:
        from spendstream.readback import BadRecord, decode_alert, tail_topic
        from spendstream.streams.api import dump
        from spendstream.topics import wait_for_broker

        wanted = alert_filter(budget_id, kinds)
        if last is not None and last < 0:
            raise CliError(f"--last must be 0 or more, not {last}")
        if last is not None and from_start:
            raise CliError("--from-start and --last exclude each other")
        settings = _settings()
        wait_for_broker(settings.bootstrap_servers, BROKER_CHECK_S)
        records = tail_topic(settings, settings.topics.alerts, decode_alert,
                             follow=follow, last=last)  # fmt: skip
        try:
            for record in records:
                if isinstance(record, BadRecord):
                    err.print(f"warning: skipped a record that does not decode (partition "
                              f"{record.partition}, offset {record.offset}): {record.error}",
                              highlight=False, markup=False, soft_wrap=True)  # fmt: skip
                elif not wanted(record):
                    continue
                elif as_json:
                    print(json.dumps(dump(record)), flush=True)
                else:
                    console.print(alert_line(record), soft_wrap=True, highlight=False)
                    console.file.flush()
        except KeyboardInterrupt:  # how a follow is meant to end: quietly, exit 0
            pass
        except BrokenPipeError:  # `| head`: the reader has what it wanted
            import os  # no second error when Python flushes stdout at exit

            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        finally:
            records.close()

    _run(body)


def _alert_action(alert_id: str, action: str, actor: str | None, note: str | None) -> None:
    def body() -> None:
        import getpass
        from datetime import UTC, datetime

        from pydantic import ValidationError

        from spendstream.producer import publish_alert_action
        from spendstream.schemas.models import AlertAction, explain
        from spendstream.streams.api import alert_known

        settings = _settings()
        budget_id = alert_id.split(":", 1)[0]
        feed = _read_budgets(settings, follow_status=True)
        if not alert_known(feed, alert_id):  # the same rule as the HTTP API
            raise CliError(f"no alert '{alert_id}' (see `spendstream alerts list`)")
        try:
            act = AlertAction(alert_id=alert_id, budget_id=budget_id, action=action,
                              actor=actor or getpass.getuser(), note=note,
                              at=datetime.now(UTC))  # fmt: skip
        except ValidationError as exc:
            raise CliError(explain(exc, "alert action")) from None
        publish_alert_action(settings, act)
        console.print(
            f"{action}d {alert_id}" if action == "resolve" else f"acknowledged {alert_id}"
        )

    _run(body)


@alerts_app.command("ack")
def alerts_ack(
    alert_id: str,
    actor: Annotated[str | None, typer.Option("--by", help="Who (default: you).")] = None,
    note: Annotated[str | None, typer.Option(help="A note for the record.")] = None,
) -> None:
    """Acknowledge an alert: someone is on it."""
    _alert_action(alert_id, "acknowledge", actor, note)


@alerts_app.command("resolve")
def alerts_resolve(
    alert_id: str,
    actor: Annotated[str | None, typer.Option("--by", help="Who (default: you).")] = None,
    note: Annotated[str | None, typer.Option(help="A note for the record.")] = None,
) -> None:
    """Resolve an alert: it leaves the budget's active alerts."""
    _alert_action(alert_id, "resolve", actor, note)


def status_table(statuses: list[Any], *, names: bool = False) -> Table:
    """Budget status; ``names`` shows budget names instead of ids (narrow terminals)."""
    held = any(getattr(s, "held_allocations", 0) for s in statuses)
    columns = ["budget", "period", "spent", "limit", "%", "state", "events"]
    table = Table(*columns, *(["waiting for a rate"] if held else []))
    for s in sorted(statuses, key=lambda s: (s.budget_id, s.period_key)):
        row = [s.budget_name if names else s.budget_id, s.period_key,
               f"{plain(s.spent)} {s.currency}", plain(s.limit), f"{s.percent}", s.state,
               str(s.event_count)]  # fmt: skip
        if held:
            amounts = ", ".join(f"{plain(v)} {c}" for c, v in (s.held_amounts or {}).items())
            row.append(f"{s.held_allocations} ({amounts})" if s.held_allocations else "")
        table.add_row(*row)
    return table


# --- publishing & analytics ----------------------------------------------------------------
#: seconds a one-shot command waits for Kafka before saying it is unreachable (the producer
#: alone would retry for minutes and log every failed connection)
BROKER_CHECK_S = 5.0


@app.command()
def publish(
    file: Annotated[
        Path,
        typer.Argument(
            help="JSON lines: usage events, raw provider payloads, or a batch API results "
            "file (OpenAI, Anthropic, Gemini)."
        ),
    ],
) -> None:
    """Publish usage events from a JSON-lines file, with progress (on stderr) and a summary.

    A batch API results file is published whole: each billed line is one event marked
    batch; lines for requests the provider did not bill (errored, canceled, expired) are
    counted and skipped; a bad line is reported with its number."""

    def body() -> None:
        from pydantic import ValidationError
        from rich.progress import track

        from spendstream.builders import BuilderError, NotBilled, build
        from spendstream.producer import UsagePublisher
        from spendstream.schemas.models import explain
        from spendstream.topics import wait_for_broker

        settings = _settings()
        try:
            # bytes: one line that is not UTF-8 is one bad line, not a bad file
            lines = file.read_bytes().splitlines()
        except OSError as exc:
            raise CliError(f"cannot read {file}: {exc.strerror}") from None
        # without a broker the producer would retry for minutes, logging every attempt
        wait_for_broker(settings.bootstrap_servers, BROKER_CHECK_S)
        rejected: list[str] = []
        not_billed = batch_calls = 0
        with UsagePublisher(settings) as publisher:
            for number, raw in track(
                list(enumerate(lines, 1)), description="publishing", console=err
            ):
                if not raw.strip():
                    continue
                try:
                    line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
                    event = build(json.loads(line))
                    publisher.publish(event)
                    batch_calls += bool(getattr(event.payload, "batch", False))
                except NotBilled:
                    not_billed += 1
                except UnicodeDecodeError as exc:
                    rejected.append(f"line {number}: not valid UTF-8 (byte 0x"
                                    f"{exc.object[exc.start]:02x} at position {exc.start + 1})")  # fmt: skip
                except ValidationError as exc:
                    rejected.append(f"line {number}: {explain(exc)}")
                except json.JSONDecodeError as exc:
                    rejected.append(f"line {number}: not JSON: {exc}")
                except BuilderError as exc:
                    rejected.append(f"line {number}: {exc}")
                except RecursionError:
                    rejected.append(f"line {number}: JSON nested too deeply")
            report = publisher.flush()
        extra = f" ({batch_calls} batch calls)" if batch_calls else ""
        skipped = f", not billed {not_billed}" if not_billed else ""
        console.print(
            f"sent {report.sent}{extra}, failed {report.failed}, rejected {len(rejected)}{skipped}"
        )
        for reason in rejected[:20] + report.errors[:20]:
            console.print(f"  {reason}")
        if rejected or report.failed:
            raise typer.Exit(1)

    _run(body)


@app.command()
def price(
    file: Annotated[
        str,
        typer.Argument(help="A JSON payload, or JSON lines (one payload a line); - for stdin."),
    ],
    source: Annotated[
        str | None,
        typer.Option(help=f"Force the format: {', '.join(sources().format_names())}."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="JSON on stdout (JSON lines: one object a line).")
    ] = False,
) -> None:
    """Price raw provider payloads: the normalized usage event and its cost breakdown.

    A file of JSON lines is priced line by line: one result per line, and a bad line is
    reported with its number (exit code 1) while the others are still priced."""

    def body() -> None:
        from spendstream.builders import NotBilled, build
        from spendstream.streams.pricing import Catalog, Pricer

        settings = _settings()
        try:
            text = sys.stdin.read() if file == "-" else Path(file).read_text(encoding="utf-8-sig")
        except OSError as exc:
            raise CliError(f"cannot read {file}: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise CliError(f"{file} is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
        pricer = Pricer(Catalog.for_settings(settings.price_catalog))
        try:
            payload = json.loads(text)
        except json.JSONDecodeError as exc:
            if not _json_lines(text, exc):
                raise CliError(f"{file} is not JSON: {exc}") from None
            if not _price_lines(text, source, pricer, as_json):
                raise typer.Exit(1) from None
            return
        except RecursionError:
            raise CliError(f"{file}: JSON nested too deeply") from None
        try:
            event = build(payload, source)
        except NotBilled as exc:
            if as_json:
                print(json.dumps({"not_billed": str(exc)}, indent=2))
            else:
                console.print(str(exc), highlight=False, markup=False)
            return
        cost = pricer.price(event)
        if as_json:
            print(json.dumps(_priced_json(event, cost), indent=2))
            return
        console.print_json(event.model_dump_json())
        table = Table("line", "quantity", "unit", "amount", title="cost breakdown")
        for c in cost.components:
            table.add_row(c.name, plain(c.quantity), c.unit, format(c.amount, "f"))
        table.add_row("[bold]total[/bold]", "", "", f"[bold]{cost.total} {cost.currency}[/bold]")
        console.print(table)
        console.print(f"priced by {cost.source} ({cost.version}){_billing_note(event.payload)}")

    _run(body)


def _billing_note(payload: Any) -> str:
    """How the call was billed, when not interactive at standard rates."""
    notes = []
    if getattr(payload, "batch", False):
        notes.append("batch rates")
    if getattr(payload, "service_tier", None):
        notes.append(f"service tier {payload.service_tier}")
    if getattr(payload, "cache_write_1h_tokens", 0):
        notes.append(f"{payload.cache_write_1h_tokens} cache writes with the 1-hour lifetime")
    return f"; {', '.join(notes)}" if notes else ""


def _json_lines(text: str, exc: json.JSONDecodeError) -> bool:
    """Whether ``text``, which is not one JSON document, reads as JSON lines: more than
    one value ("Extra data"), or a first line that is JSON on its own."""
    if exc.msg == "Extra data":
        return True
    lines = [line for line in text.split("\n") if line.strip()]
    if len(lines) < 2:
        return False
    try:
        json.loads(lines[0])
    except (json.JSONDecodeError, RecursionError):
        return False
    return True


def _priced_json(event: Any, cost: Any) -> dict[str, Any]:
    return {
        "event": event.model_dump(mode="json"),
        "total_cost": format(cost.total, "f"),
        "currency": cost.currency,
        "price_source": cost.source,
        "price_version": cost.version,
        "batch": bool(getattr(event.payload, "batch", False)),
        "components": [
            {"name": c.name, "quantity": format(c.quantity.normalize(), "f"), "unit": c.unit,
             "amount": format(c.amount, "f")}
            for c in cost.components
        ],
    }  # fmt: skip


def _what(payload: Any) -> str:
    """What a payload is, in a few words: provider and model, actor, workflow, category."""
    names = ("provider", "model", "actor_id", "platform", "workflow_id", "category")
    return " ".join(str(v) for v in (getattr(payload, n, None) for n in names) if v)


def _price_lines(text: str, source: str | None, pricer: Any, as_json: bool) -> bool:
    """Price each line of JSON lines; prints one result per line. True if all priced."""
    from pydantic import ValidationError

    from spendstream.builders import BuilderError, NotBilled, build
    from spendstream.schemas.models import explain
    from spendstream.streams.pricing import PricingError

    table = Table("line", "event", "what", "total", "currency", "priced by")
    failures: list[str] = []
    totals: dict[str, Decimal] = {}
    for number, line in enumerate(text.split("\n"), 1):  # JSON strings may hold U+2028
        if not line.strip():
            continue
        try:
            event = build(json.loads(line), source)
            cost = pricer.price(event)
        except NotBilled as exc:  # a batch result the provider did not bill: no cost, no fault
            if as_json:
                print(json.dumps({"line": number, "not_billed": str(exc)}))
            else:
                table.add_row(str(number), "-", "not billed", "0", "", "")
            continue
        except json.JSONDecodeError as exc:
            reason = f"not JSON: {exc}"
        except (BuilderError, PricingError) as exc:
            reason = str(exc)
        except ValidationError as exc:
            reason = explain(exc)
        except RecursionError:
            reason = "JSON nested too deeply"
        else:
            if as_json:
                print(json.dumps({"line": number, **_priced_json(event, cost)}))
            else:
                table.add_row(str(number), event.event_id, _what(event.payload),
                              format(cost.total, "f"), cost.currency, cost.source)  # fmt: skip
                totals[cost.currency] = totals.get(cost.currency, Decimal(0)) + cost.total
            continue
        failures.append(f"line {number}: {reason}")
        if as_json:
            print(json.dumps({"line": number, "error": reason}))
    if not as_json:
        for currency, total in sorted(totals.items()):
            table.add_row("[bold]total[/bold]", "", "", f"[bold]{format(total, 'f')}[/bold]",
                          currency, "")  # fmt: skip
        console.print(table)
        for failure in failures:
            err.print(failure, highlight=False, markup=False, soft_wrap=True)
    return not failures


@app.command()
def sql(
    query: str,
    fmt: Annotated[str, typer.Option("--format", help="table | csv | json")] = "table",
) -> None:
    """Run read-only SQL against ClickHouse (through the running sink when it holds chDB).

    JSON is always valid JSON: Decimals are exact strings (also inside arrays, tuples and
    maps), dates, times, UUIDs and IP addresses strings, NaN and +/-Infinity null (JSON has
    no such numbers), bytes UTF-8 text with undecodable bytes as \\xNN. CSV lines end in
    \\n, nested values are JSON text."""

    def body() -> None:
        from spendstream.sinks.warehouse import open_warehouse

        warehouse = open_warehouse(_settings())
        try:
            result = warehouse.query(query)
        finally:
            warehouse.close()
        print_result(result.columns, result.rows, fmt)

    _run(body)


def _exact(value: Decimal) -> str:
    """A Decimal as ClickHouse gave it, without exponent: 0.000000001, never 1E-9."""
    return format(value, "f")


def _cell(value: Any) -> str:
    """One value as text for CSV and tables: scalars as in JSON, nested values as JSON."""
    from spendstream.streams.api import jsonable

    converted = jsonable(value, _exact)
    if converted is None:
        return ""
    if isinstance(converted, (list, dict)):
        return json.dumps(converted, ensure_ascii=False)
    return str(converted)


def print_result(columns: list[str], rows: list[tuple[Any, ...]], fmt: str) -> None:
    """Print a query result; every format is parseable whatever types ClickHouse returns."""
    if fmt == "json":
        from spendstream.streams.api import jsonable

        print(json.dumps([{c: jsonable(v, _exact) for c, v in zip(columns, r, strict=True)}
                          for r in rows], allow_nan=False))  # fmt: skip
    elif fmt == "csv":
        import csv

        writer = csv.writer(sys.stdout, lineterminator="\n")  # not CRLF, also on a terminal
        writer.writerow(columns)
        writer.writerows([_cell(v) for v in row] for row in rows)
    elif fmt == "table":
        from rich.text import Text

        table = Table(*columns)
        for row in rows:  # cells as Text: data, never rich markup
            table.add_row(*(Text("NULL", "dim") if v is None else Text(_cell(v)) for v in row))
        console.print(table)
    else:
        raise CliError(f"unknown format '{fmt}': use table, csv or json")


@app.command()
def report(
    kind: Annotated[
        str,
        typer.Argument(help="summary | trend | compare | projection | top | recommendations"),
    ],
    since: Annotated[
        str | None, typer.Option(help="From this day (YYYY-MM-DD), inclusive.")
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="Up to this day (YYYY-MM-DD), exclusive.")
    ] = None,
    budget: Annotated[str | None, typer.Option(help="Only spend allocated to this budget.")] = None,
    where: Annotated[
        list[str] | None, typer.Option(help="Filter DIM=VALUE, e.g. team=ml (repeatable).")
    ] = None,
    by: Annotated[str, typer.Option(help="Dimension for compare/top.")] = "model",
    granularity: Annotated[str, typer.Option(help="trend: day | week | month.")] = "day",
    period: Annotated[str, typer.Option(help="compare: week | month.")] = "month",
    limit: Annotated[int, typer.Option(min=1, max=1000, help="top: how many rows.")] = 10,
    fmt: Annotated[str, typer.Option("--format", help="table | csv | json | md")] = "table",
) -> None:
    """Reports on the data in ClickHouse (works while the sink runs)."""

    def body() -> None:
        from datetime import date

        from spendstream.sinks import reports
        from spendstream.sinks.recommendations import recommendations_report
        from spendstream.sinks.warehouse import open_warehouse
        from spendstream.streams.pricing import Catalog, Pricer

        settings = _settings()
        if fmt not in reports.FORMATS:
            raise CliError(f"unknown format '{fmt}': use one of {', '.join(reports.FORMATS)}")

        def day(text: str | None, name: str) -> date | None:
            try:
                return date.fromisoformat(text) if text else None
            except ValueError:
                raise CliError(f"--{name} must be a date like 2026-11-01, got '{text}'") from None

        filters = reports.Filters(since=day(since, "since"), until=day(until, "until"),
                                  budget=budget)  # fmt: skip
        for item in where or []:
            dim, sep, value = item.partition("=")
            if not sep or not value:
                raise CliError(f"--where needs DIM=VALUE, got '{item}'")
            reports.column_of(dim)
            filters.where[dim] = value
        builders = {
            "summary": lambda w: reports.summary(w, filters),
            "trend": lambda w: reports.trend(w, filters, granularity),
            "compare": lambda w: reports.compare(w, filters, by=by, period=period),
            "projection": lambda w: reports.projection(w, filters),
            "top": lambda w: reports.top(w, filters, by=by, limit=limit),
            "recommendations": lambda w: recommendations_report(
                w, Pricer(Catalog.for_settings(settings.price_catalog))
            ),
        }
        if kind not in builders:
            raise CliError(f"unknown report '{kind}': use one of {', '.join(builders)}")
        warehouse = open_warehouse(settings)
        try:
            if budget is not None:
                _require_stored_budget(warehouse, budget)
            result = builders[kind](warehouse)
        finally:
            warehouse.close()
        sys.stdout.write(result.render(fmt))

    _run(body)


def _require_stored_budget(warehouse: Any, budget_id: str) -> None:
    """A report for a budget ClickHouse never heard of would show zeros as if it were real:
    say the name is wrong instead. Deleted budgets still count (their spend stays)."""
    known = warehouse.query(
        "SELECT count() FROM budgets WHERE budget_id = {b:String}", {"b": budget_id}
    ).scalar()
    if not known:
        raise CliError(f"no budget '{budget_id}' in ClickHouse (see `spendstream budgets list`; "
                       "a new budget reaches ClickHouse through the sink)")  # fmt: skip


@app.command()
def demo(
    events: Annotated[int, typer.Option(min=10, max=100_000, help="Events to publish.")] = 300,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for processing.")] = 180,
    keep_running: Annotated[
        bool,
        typer.Option(
            "--keep-running",
            help="After the checks, keep the stack up (the live dashboard) until Ctrl-C.",
        ),
    ] = False,
) -> None:
    """End to end on this machine: local Kafka, worker, sink, synthetic usage, results."""

    def body() -> None:
        from spendstream.demo import run_demo

        run_demo(_settings(), events=events, timeout=timeout, console=console,
                 keep_running=keep_running)  # fmt: skip

    _run(body)


@fx_app.command("publish")
def fx_publish(
    file: Annotated[
        Path,
        typer.Argument(
            help="ECB reference-rate CSV (eurofxref.csv or eurofxref-hist.csv) or a "
            "date,currency,rate CSV"
        ),
    ],
    base: Annotated[
        str,
        typer.Option(
            help="For date,currency,rate files: 1 BASE = rate currency (the ECB's are EUR-based)"
        ),
    ] = "EUR",
) -> None:
    """Publish reference rates to the compacted fx-rates topic. Allocations to a budget in
    another currency convert at the rate of their event's day; those waiting for a rate
    are counted as soon as it arrives."""
    from spendstream.fx_files import read_rates
    from spendstream.producer import publish_rates
    from spendstream.topics import ensure_topics

    def body() -> None:
        settings = _settings()
        rates = read_rates(file, base=base)
        ensure_topics(settings)
        topic = settings.topics.fx_rates
        count = publish_rates(settings, rates)
        days = sorted({r.day for r in rates})
        quotes = sorted({r.quote for r in rates})
        console.print(f"published {count} rates ({len(quotes)} currencies against "
                      f"{', '.join(sorted({r.base for r in rates}))}, {days[0]} .. {days[-1]}) "
                      f"to {topic}")  # fmt: skip

    _run(body)


@fx_app.command("list")
def fx_list(
    currency: Annotated[
        list[str] | None, typer.Option("--currency", "-c", help="Only these currencies")
    ] = None,
    days: Annotated[int, typer.Option(help="The newest N days")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line")] = False,
) -> None:
    """The reference rates published, newest days first."""
    from spendstream.readback import read_topic
    from spendstream.schemas.avro import configure_registry
    from spendstream.schemas.fx import FxRate

    def body() -> None:
        settings = _settings()
        configure_registry(settings.schema_registry_url or None)
        latest: dict[str, FxRate] = {}
        for _key, rate in read_topic(settings, settings.topics.fx_rates, FxRate.decode):
            latest[rate.key] = rate  # a correction replaces the rate
        wanted = {c.upper() for c in currency or []}
        rates = [r for r in latest.values() if not wanted or r.quote in wanted]
        newest = sorted({r.day for r in rates}, reverse=True)[: max(days, 1)]
        shown = sorted((r for r in rates if r.day in newest),
                       key=lambda r: (r.day, r.base, r.quote), reverse=True)  # fmt: skip
        if as_json:
            for r in shown:
                print(json.dumps({"day": r.day.isoformat(), "base": r.base, "quote": r.quote,
                                  "rate": plain(r.rate), "source": r.source}))  # fmt: skip
            return
        if not shown:
            console.print("no exchange rates published (spendstream fx publish FILE)")
            return
        table = Table("day", "base", "quote", "rate", "source")
        for r in shown:
            table.add_row(r.day.isoformat(), r.base, r.quote, plain(r.rate), r.source)
        console.print(table)

    _run(body)


def main() -> None:
    try:
        app()
    except ConfigError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
