"""Reading ClickHouse: ``sql`` and ``report``."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from spendstream.cli.base import CliError, _run, _settings, console
from spendstream.render import print_result

#: its commands join the root app unnamed (app.py)
app = typer.Typer()


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
        print_result(result.columns, result.rows, fmt, console)

    _run(body)


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
