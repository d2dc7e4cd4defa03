"""The ``spendstream`` command. Every failure ends in one clear message, never a traceback."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from spendstream.config import ConfigError, Settings, load_settings
from spendstream.schemas.money import plain

app = typer.Typer(
    help="Stream processor for AI and API spend: price usage, match budgets, alert, analyse.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
kafka_app = typer.Typer(help="The local Kafka broker (no Docker needed).", no_args_is_help=True)
budgets_app = typer.Typer(help="Budget definitions.", no_args_is_help=True)
topics_app = typer.Typer(help="Kafka topics.", no_args_is_help=True)
app.add_typer(kafka_app, name="kafka")
app.add_typer(budgets_app, name="budgets")
app.add_typer(topics_app, name="topics")

console = Console()
err = Console(stderr=True)
T = TypeVar("T")


class CliError(Exception):
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
    from spendstream.builders import BuilderError
    from spendstream.demo import DemoError
    from spendstream.localkafka import LocalKafkaError
    from spendstream.processes import ServiceFailed
    from spendstream.producer import PublishError
    from spendstream.schemas.budget import BudgetError
    from spendstream.sinks.reports import ReportError
    from spendstream.sinks.warehouse import WarehouseError
    from spendstream.streams.pricing import PricingError
    from spendstream.topics import TopicsError

    try:
        return action()
    except (
        ConfigError,
        CliError,
        BuilderError,
        DemoError,
        ServiceFailed,
        LocalKafkaError,
        PublishError,
        BudgetError,
        WarehouseError,
        TopicsError,
        PricingError,
        ReportError,
    ) as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        err.print("interrupted")
        raise typer.Exit(130) from None
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
def worker() -> None:
    """Run a stream worker (price, match, aggregate, alert). Run several for scale-out."""

    def body() -> None:
        settings = _settings()
        from spendstream.topics import ensure_topics, wait_for_broker

        wait_for_broker(settings.bootstrap_servers, 60)
        ensure_topics(settings)
        if settings.budgets_file:
            from spendstream.producer import publish_budgets
            from spendstream.schemas.budget import load_budgets_file

            budgets = load_budgets_file(settings.budgets_file)
            publish_budgets(settings, budgets)
            logging.getLogger("spendstream").info("published %d budgets", len(budgets))
        from faust import Worker

        from spendstream.streams.app import create_app

        faust_app = create_app(settings)
        sys.argv = [sys.argv[0]]
        Worker(
            faust_app, loglevel=settings.log_level.lower(), quiet=True
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


# --- budgets -------------------------------------------------------------------------------
@budgets_app.command("apply")
def budgets_apply(file: Path) -> None:
    """Validate budgets from a YAML/JSON file and publish them to the budgets topic."""

    def body() -> None:
        from spendstream.producer import publish_budgets
        from spendstream.schemas.budget import load_budgets_file
        from spendstream.topics import ensure_topics, wait_for_broker

        settings = _settings()
        budgets = load_budgets_file(file)
        wait_for_broker(settings.bootstrap_servers, 30)
        ensure_topics(settings)
        publish_budgets(settings, budgets)
        console.print(f"applied {len(budgets)} budgets: {', '.join(b.budget_id for b in budgets)}")

    _run(body)


@budgets_app.command("list")
def budgets_list() -> None:
    """List the budgets currently defined (read from the budgets topic)."""

    def body() -> None:
        from spendstream.streams.budget_feed import BudgetFeed

        settings = _settings()
        feed = BudgetFeed(settings)
        feed.start()
        if not feed.ready.wait(30):
            raise CliError("could not read the budgets topic within 30 s")
        feed.stop()
        table = Table("id", "name", "parent", "limit", "period", "tz", "scope")
        for b in sorted(feed.registry.all(), key=lambda b: b.budget_id):
            table.add_row(b.budget_id, b.name, b.parent_id or "", f"{plain(b.limit)} "
                          f"{b.currency}", b.period, b.timezone, json.dumps(b.scope))  # fmt: skip
        console.print(table)

    _run(body)


@budgets_app.command("status")
def budgets_status(
    budget_id: Annotated[str | None, typer.Argument(help="Only this budget.")] = None,
) -> None:
    """Latest status per budget and period (from the budget-status topic)."""

    def body() -> None:
        from spendstream.readback import read_statuses

        settings = _settings()
        statuses = read_statuses(settings)
        if budget_id:
            statuses = [s for s in statuses if s.budget_id == budget_id]
            if not statuses:
                raise CliError(f"no status for budget '{budget_id}' yet")
        console.print(status_table(statuses))

    _run(body)


def status_table(statuses: list[Any], *, names: bool = False) -> Table:
    """Budget status; ``names`` shows budget names instead of ids (narrow terminals)."""
    table = Table("budget", "period", "spent", "limit", "%", "state", "events")
    for s in sorted(statuses, key=lambda s: (s.budget_id, s.period_key)):
        table.add_row(s.budget_name if names else s.budget_id, s.period_key, plain(s.spent),
                      plain(s.limit), f"{s.percent}", s.state, str(s.event_count))  # fmt: skip
    return table


# --- publishing & analytics ----------------------------------------------------------------
@app.command()
def publish(
    file: Annotated[
        Path, typer.Argument(help="JSON lines: usage events or raw provider payloads.")
    ],
) -> None:
    """Publish usage events from a JSON-lines file, with progress and a summary."""

    def body() -> None:
        from pydantic import ValidationError
        from rich.progress import track

        from spendstream.builders import BuilderError, build
        from spendstream.producer import UsagePublisher
        from spendstream.schemas.models import explain

        settings = _settings()
        try:
            lines = file.read_text().splitlines()
        except OSError as exc:
            raise CliError(f"cannot read {file}: {exc.strerror}") from None
        rejected: list[str] = []
        with UsagePublisher(settings) as publisher:
            for number, line in track(list(enumerate(lines, 1)), description="publishing"):
                if not line.strip():
                    continue
                try:
                    publisher.publish(build(json.loads(line)))
                except ValidationError as exc:
                    rejected.append(f"line {number}: {explain(exc)}")
                except (BuilderError, json.JSONDecodeError) as exc:
                    rejected.append(f"line {number}: {exc}")
            report = publisher.flush()
        console.print(f"sent {report.sent}, failed {report.failed}, rejected {len(rejected)}")
        for reason in rejected[:20] + report.errors[:20]:
            console.print(f"  {reason}")
        if rejected or report.failed:
            raise typer.Exit(1)

    _run(body)


@app.command()
def price(
    file: Annotated[str, typer.Argument(help="A JSON payload file, or - for standard input.")],
    source: Annotated[
        str | None,
        typer.Option(
            help="Force the format: event, openai-chat, openai-responses, "
            "openai-embedding, anthropic, gemini, apify, n8n, zapier, make, "
            "power-automate."
        ),  # fmt: skip
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
) -> None:
    """Price one raw provider payload: the normalized usage event and its cost breakdown."""

    def body() -> None:
        from spendstream.builders import build
        from spendstream.streams.pricing import Catalog, Pricer

        settings = _settings()
        try:
            text = sys.stdin.read() if file == "-" else Path(file).read_text()
        except OSError as exc:
            raise CliError(f"cannot read {file}: {exc.strerror}") from None
        try:
            payload = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CliError(f"{file} is not JSON: {exc}") from None
        event = build(payload, source)
        cost = Pricer(Catalog.for_settings(settings.price_catalog)).price(event)
        if as_json:
            print(json.dumps({
                "event": event.model_dump(mode="json"),
                "total_cost": format(cost.total, "f"),
                "currency": cost.currency,
                "price_source": cost.source,
                "price_version": cost.version,
                "components": [
                    {"name": c.name, "quantity": format(c.quantity.normalize(), "f"),
                     "unit": c.unit, "amount": format(c.amount, "f")}
                    for c in cost.components
                ],
            }, indent=2))  # fmt: skip
            return
        console.print_json(event.model_dump_json())
        table = Table("line", "quantity", "unit", "amount", title="cost breakdown")
        for c in cost.components:
            table.add_row(c.name, plain(c.quantity), c.unit, format(c.amount, "f"))
        table.add_row("[bold]total[/bold]", "", "", f"[bold]{cost.total} {cost.currency}[/bold]")
        console.print(table)
        console.print(f"priced by {cost.source} ({cost.version})")

    _run(body)


@app.command()
def sql(
    query: str,
    fmt: Annotated[str, typer.Option("--format", help="table | csv | json")] = "table",
) -> None:
    """Run read-only SQL against ClickHouse (through the running sink when it holds chDB)."""

    def body() -> None:
        from spendstream.sinks.warehouse import open_warehouse

        warehouse = open_warehouse(_settings())
        try:
            result = warehouse.query(query)
        finally:
            warehouse.close()
        print_result(result.columns, result.rows, fmt)

    _run(body)


def print_result(columns: list[str], rows: list[tuple[Any, ...]], fmt: str) -> None:
    if fmt == "json":

        def conv(v: Any) -> Any:
            return str(v) if isinstance(v, Decimal) else v.isoformat() if hasattr(
                v, "isoformat") else v  # fmt: skip

        print(json.dumps([{c: conv(v) for c, v in zip(columns, r, strict=True)} for r in rows]))
    elif fmt == "csv":
        import csv

        writer = csv.writer(sys.stdout)
        writer.writerow(columns)
        writer.writerows(rows)
    elif fmt == "table":
        table = Table(*columns)
        for row in rows:
            table.add_row(*(str(v) for v in row))
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
            result = builders[kind](warehouse)
        finally:
            warehouse.close()
        sys.stdout.write(result.render(fmt))

    _run(body)


@app.command()
def demo(
    events: Annotated[int, typer.Option(min=10, max=100_000, help="Events to publish.")] = 300,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for processing.")] = 180,
) -> None:
    """End to end on this machine: local Kafka, worker, sink, synthetic usage, results."""

    def body() -> None:
        from spendstream.demo import run_demo

        run_demo(_settings(), events=events, timeout=timeout, console=console)

    _run(body)


def main() -> None:
    try:
        app()
    except ConfigError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
