"""``spendstream fx``: publish and list exchange rates."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from spendstream.cli.base import _run, _settings, console
from spendstream.schemas.money import plain

fx_app = typer.Typer(
    help="Exchange rates for budgets in another currency than the spend.", no_args_is_help=True
)


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
    from spendstream.schemas.fx import FxRate

    def body() -> None:
        settings = _settings()
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
