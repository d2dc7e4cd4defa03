"""Rich views of spendstream data that more than one place prints: budget status tables
and the --watch view (the CLI and the demo), one alert as a line, query results as
table, CSV or JSON. Nothing here reads Kafka or knows a command: it only renders, so
the CLI and the demo both import it and neither imports the other."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from rich.console import Console, RenderableType
from rich.table import Table

from spendstream.errors import UserError
from spendstream.schemas.money import plain

if TYPE_CHECKING:
    from datetime import datetime


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


SEVERITY_STYLE = {"info": "cyan", "warning": "yellow", "critical": "bold red"}


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


class FormatError(UserError, ValueError):
    """An output format ``print_result`` does not know."""


def print_result(
    columns: list[str], rows: list[tuple[Any, ...]], fmt: str, console: Console | None = None
) -> None:
    """Print a query result; every format is parseable whatever types ClickHouse returns.
    ``console`` prints the table (default: a new one on stdout)."""
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
        (console or Console()).print(table)
    else:
        raise FormatError(f"unknown format '{fmt}': use table, csv or json")
