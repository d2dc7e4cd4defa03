"""Reports on top of ClickHouse: summary, trend, compare, projection, top cost drivers.

Every report is SQL over the same tables analysts query (``FINAL`` for exact money), run
through a Warehouse (the running sink's query port, a direct chDB client or a server),
and comes back as a Report that renders as a table, CSV, JSON or Markdown.

Amounts in different currencies are never added: every money column comes with a
currency column, and every sum, total and share is per currency.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from pydantic import ValidationError

from spendstream.errors import UserError
from spendstream.schemas.budget import BudgetDefinition
from spendstream.schemas.models import to_micros
from spendstream.schemas.money import from_nanos, to_nanos
from spendstream.sources import sources
from spendstream.streams.forecast import US_PER_DAY, project
from spendstream.streams.periods import Period, budget_period

from .warehouse import Warehouse

#: Dimensions every event has -> column of priced_usage; the source kinds add theirs
#: (provider, model, platform, workflow, actor, category: spendstream/sources/).
BASE_DIMENSIONS = {
    "source": "source",
    "org": "org",
    "team": "team",
    "project": "project",
    "user": "user",
    "department": "department",
    "feature": "feature",
}


def dimensions() -> dict[str, str]:
    """Dimensions a report may group or filter by -> column of priced_usage."""
    return {**BASE_DIMENSIONS, **sources().dimensions()}


FORMATS = ("table", "csv", "json", "md")


class ReportError(UserError, ValueError):
    pass


@dataclass
class Filters:
    since: date | None = None
    until: date | None = None  # exclusive
    budget: str | None = None
    where: dict[str, str] = field(default_factory=dict)  # dimension -> value

    def clause(self, params: dict[str, Any], *, time_column: str = "occurred_at") -> str:
        parts = ["1"]
        if self.since:
            parts.append(f"{time_column} >= {{since:DateTime64(6, 'UTC')}}")
            params["since"] = datetime.combine(self.since, datetime.min.time(), UTC)
        if self.until:
            parts.append(f"{time_column} < {{until:DateTime64(6, 'UTC')}}")
            params["until"] = datetime.combine(self.until, datetime.min.time(), UTC)
        for i, (dim, value) in enumerate(sorted(self.where.items())):
            column = column_of(dim)
            parts.append(f"{column} = {{w{i}:String}}")
            params[f"w{i}"] = value
        return " AND ".join(parts)


def column_of(dimension: str) -> str:
    known = dimensions()
    try:
        return known[dimension]
    except KeyError:
        raise ReportError(
            f"unknown dimension '{dimension}'; use one of {', '.join(known)}"
        ) from None


@dataclass
class Report:
    title: str
    columns: list[str]
    rows: list[list[Any]]
    notes: list[str] = field(default_factory=list)

    def render(self, fmt: str) -> str:
        if fmt == "json":
            return json.dumps(
                {"report": self.title, "rows": [dict(zip(self.columns, map(_json, r), strict=True))
                                                 for r in self.rows], "notes": self.notes},
                indent=2,
            )  # fmt: skip
        if fmt == "csv":
            out = io.StringIO()
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(self.columns)
            writer.writerows([[_text(v) for v in r] for r in self.rows])
            return out.getvalue()
        if fmt == "md":
            lines = [f"### {self.title}", "", "| " + " | ".join(self.columns) + " |",
                     "|" + "|".join("---" for _ in self.columns) + "|"]  # fmt: skip
            lines += ["| " + " | ".join(_text(v).replace("|", "\\|") for v in r) + " |"
                      for r in self.rows]  # fmt: skip
            lines += [f"\n{n}" for n in self.notes]
            return "\n".join(lines) + "\n"
        if fmt == "table":
            from rich.console import Console
            from rich.table import Table

            table = Table(*self.columns, title=self.title)
            for row in self.rows:
                table.add_row(*(_text(v) for v in row))
            console = Console(file=io.StringIO(), width=120, force_terminal=False)
            console.print(table)
            for note in self.notes:
                console.print(note)
            return console.file.getvalue()  # type: ignore[attr-defined]
        raise ReportError(f"unknown format '{fmt}': use one of {', '.join(FORMATS)}")


def _text(value: Any) -> str:
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):
        return value.isoformat()
    return "" if value is None else str(value)


def _json(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value, "f")  # exact, as a string
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    return value


def _source(filters: Filters, params: dict[str, Any]) -> tuple[str, str, str]:
    """(table expression, money column, where) — a budget's allocations in its currency (converted
    where billed in another; those still waiting for a rate are left out) when a budget is
    named, else usage as billed."""
    if filters.budget:
        params["budget"] = filters.budget
        where = filters.clause(params) + " AND budget_id = {budget:String} AND NOT held"
        return "allocations_in_budget_currency", "amount", where
    return "priced_usage FINAL", "cost", filters.clause(params)


def summary(w: Warehouse, filters: Filters) -> Report:
    """Spend per source and provider, and a total per currency."""
    params: dict[str, Any] = {}
    table, money, where = _source(filters, params)
    totals = w.query(
        f"SELECT currency, count(), sum({money}), min(occurred_at), max(occurred_at) "
        f"FROM {table} WHERE {where} GROUP BY currency ORDER BY currency",
        params,
    ).rows
    by = w.query(
        f"SELECT source, if(provider = '', '-', provider) AS provider, currency, "
        f"count() AS events, sum({money}) AS cost FROM {table} WHERE {where} "
        "GROUP BY source, provider, currency ORDER BY currency, cost DESC, source, provider",
        params,
    )
    rows = [list(r) for r in by.rows]
    rows += [["total", "", currency, n, cost] for currency, n, cost, _, _ in totals]
    if totals:
        first, last = min(t[3] for t in totals), max(t[4] for t in totals)
        notes = [f"events from {first} to {last}"]
        if len(totals) > 1:
            notes.append("one total per currency: amounts in different currencies are never added")
    else:
        rows.append(["total", "", "", 0, Decimal(0)])
        notes = ["no events match"]
    return Report("spend summary", ["source", "provider", "currency", "events", "cost"], rows,
                  notes)  # fmt: skip


def trend(w: Warehouse, filters: Filters, granularity: str = "day") -> Report:
    bucket = {"day": "toDate", "week": "toMonday", "month": "toStartOfMonth"}.get(granularity)
    if bucket is None:
        raise ReportError("granularity must be day, week or month")
    params: dict[str, Any] = {}
    table, money, where = _source(filters, params)
    result = w.query(
        f"SELECT {bucket}(occurred_at) AS bucket, currency, count() AS events, "
        f"sum({money}) AS cost FROM {table} WHERE {where} GROUP BY bucket, currency "
        "ORDER BY bucket, currency",
        params,
    )
    rows = []
    previous: dict[str, Decimal] = {}  # per currency: the change is within one currency
    for bucket_start, currency, events, cost in result.rows:
        before = previous.get(currency)
        change = "" if before in (None, Decimal(0)) else _pct(cost - before, before)
        rows.append([bucket_start, currency, events, cost, change])
        previous[currency] = cost
    return Report(f"spend trend per {granularity}",
                  [granularity, "currency", "events", "cost", "change %"], rows)  # fmt: skip


def _pct(delta: Decimal, base: Decimal | None) -> str:
    if not base:
        return "new"
    return format((delta * 100 / base).quantize(Decimal("0.1")), "f")


def _month_start(day: date) -> date:
    return day.replace(day=1)


def compare(
    w: Warehouse, filters: Filters, by: str = "model", period: str = "month",
    today: date | None = None,
) -> Report:  # fmt: skip
    """This period vs the one before, per dimension (calendar-aligned, UTC)."""
    today = today or datetime.now(UTC).date()
    if period == "month":
        cur_start = _month_start(today)
        prev_start = _month_start(cur_start - timedelta(days=1))
    elif period == "week":
        cur_start = today - timedelta(days=today.weekday())
        prev_start = cur_start - timedelta(days=7)
    else:
        raise ReportError("period must be week or month")
    cur_end = today + timedelta(days=1)
    # same elapsed part of the previous period, so half a month is not compared with a whole
    prev_end = prev_start + (cur_end - cur_start)
    column = column_of(by)
    params: dict[str, Any] = {"ps": _dt(prev_start), "pe": _dt(min(prev_end, cur_start)),
                              "cs": _dt(cur_start), "ce": _dt(cur_end)}  # fmt: skip
    table, money, where = _source(filters, params)
    result = w.query(
        f"SELECT {column} AS key, currency, "
        f"sumIf({money}, occurred_at >= {{ps:DateTime64(6, 'UTC')}} AND occurred_at < "
        f"{{pe:DateTime64(6, 'UTC')}}) AS previous, "
        f"sumIf({money}, occurred_at >= {{cs:DateTime64(6, 'UTC')}} AND occurred_at < "
        f"{{ce:DateTime64(6, 'UTC')}}) AS current "
        f"FROM {table} WHERE {where} GROUP BY key, currency "
        "HAVING previous != 0 OR current != 0 ORDER BY currency, current DESC, key",
        params,
    )
    rows: list[list[Any]] = [
        [k or "-", currency, prev, cur, cur - prev, _pct(cur - prev, prev)]
        for k, currency, prev, cur in result.rows
    ]
    for currency in sorted({r[1] for r in rows}):
        tp = sum((r[2] for r in rows if r[1] == currency), Decimal(0))
        tc = sum((r[3] for r in rows if r[1] == currency), Decimal(0))
        rows.append(["total", currency, tp, tc, tc - tp, _pct(tc - tp, tp)])
    if not rows:
        rows.append(["total", "", Decimal(0), Decimal(0), Decimal(0), _pct(Decimal(0), None)])
    title = f"{period} to date vs the same days of the previous {period}, by {by}"
    return Report(title, [by, "currency", "previous", "current", "change", "change %"], rows,
                  [f"current: {cur_start} .. {today}; previous: {prev_start} .. "
                   f"{min(prev_end, cur_start) - timedelta(days=1)}"])  # fmt: skip


def _dt(day: date) -> datetime:
    return datetime.combine(day, datetime.min.time(), UTC)


#: Day of the period an allocation falls on, as the stream's state keys its daily spend.
_DAY_OF_PERIOD = (
    "intDiv(toUnixTimestamp64Micro(occurred_at) - toUnixTimestamp64Micro(period_start), "
    f"{US_PER_DAY})"
)
PROJECTION_COLUMNS = ["scope", "period", "currency", "spent", "per day", "projected",
                      "95% low", "95% high", "limit", "verdict"]  # fmt: skip


def projection(w: Warehouse, filters: Filters, now: datetime | None = None) -> Report:
    """Each budget over its own current period (its period kind and time zone), projected
    with the stream's method (streams/forecast.py) as of the latest event counted, so the
    figures are those of the stream's status and forecast alert; and the selection's UTC
    month to date, per currency, projected the same way."""
    now = now or datetime.now(UTC)
    rows = _selection_projection(w, filters, now)
    notes = [
        "projected like the stream's status and forecast alert (streams/forecast.py): run "
        "rate so far, 95% band from the spread of complete days, as of the latest event "
        "counted",
        f"(selection): UTC month {now:%Y-%m} of the filtered spend; budgets: each over its "
        "own current period and time zone, all of its spend (--where/--since/--until do "
        "not apply)",
    ]
    budgets, skipped = _live_budgets(w, filters.budget)
    notes += skipped
    current = {b.budget_id: p for b in budgets if (p := budget_period(b, now)) is not None}
    spend = _period_spend(w, current)
    for budget in budgets:
        period = current.get(budget.budget_id)
        if period is None:
            rows.append([budget.budget_id, "-", budget.currency, Decimal(0), "", "", "", "",
                         budget.limit, "outside its window"])  # fmt: skip
            continue
        spent_nanos, daily, last_us = spend.get(budget.budget_id, (0, {}, 0))
        start_us, end_us = to_micros(period.start), to_micros(period.end)
        proj = project(spent_nanos, daily, start_us, end_us, last_us or start_us, budget.limit)
        spent = from_nanos(spent_nanos)
        verdict = ("exceeded" if spent > budget.limit
                   else "over" if proj.projected > budget.limit else "within")  # fmt: skip
        rows.append([budget.budget_id, period.key, budget.currency, spent,
                     proj.burn_rate_per_day, proj.projected, proj.low, proj.high, budget.limit,
                     verdict])  # fmt: skip
    return Report("projection per budget period", PROJECTION_COLUMNS, rows, notes)


def _selection_projection(w: Warehouse, filters: Filters, now: datetime) -> list[list[Any]]:
    """The filtered spend of the UTC month holding ``now``, per currency."""
    start = datetime.combine(_month_start(now.date()), datetime.min.time(), UTC)
    end = datetime.combine(_month_start(start.date() + timedelta(days=32)), datetime.min.time(),
                           UTC)  # fmt: skip
    params: dict[str, Any] = {"s": start, "e": end, "s_us": to_micros(start)}
    table, money, where = _source(filters, params)
    result = w.query(
        f"SELECT currency, intDiv(toUnixTimestamp64Micro(occurred_at) - {{s_us:Int64}}, "
        f"{US_PER_DAY}) AS day, sum({money}), max(toUnixTimestamp64Micro(occurred_at)) "
        f"FROM {table} WHERE {where} AND occurred_at >= {{s:DateTime64(6, 'UTC')}} "
        "AND occurred_at < {e:DateTime64(6, 'UTC')} GROUP BY currency, day",
        params,
    )
    per_currency: dict[str, tuple[int, dict[int, int], int]] = {}
    for currency, day, amount, last_us in result.rows:
        nanos, daily, last = per_currency.get(currency, (0, {}, 0))
        daily[int(day)] = to_nanos(amount)
        per_currency[currency] = (nanos + to_nanos(amount), daily, max(last, int(last_us)))
    if not per_currency:
        return [["(selection)", f"{start:%Y-%m}", "", Decimal(0), "", "", "", "", "", ""]]
    rows: list[list[Any]] = []
    for currency, (nanos, daily, last_us) in sorted(per_currency.items()):
        proj = project(nanos, daily, to_micros(start), to_micros(end), last_us, Decimal(0))
        rows.append(["(selection)", f"{start:%Y-%m}", currency, from_nanos(nanos),
                     proj.burn_rate_per_day, proj.projected, proj.low, proj.high, "", ""])  # fmt: skip
    return rows


def _live_budgets(w: Warehouse, only: str | None) -> tuple[list[BudgetDefinition], list[str]]:
    """Live budget definitions from the budgets table (the latest version of each), and a
    note for each that cannot be rebuilt from it."""
    params: dict[str, Any] = {"only": only or ""}
    result = w.query(
        "SELECT budget_id, argMax(name, _offset), argMax(`limit`, _offset), "
        "argMax(currency, _offset), argMax(period, _offset), argMax(timezone, _offset), "
        "argMax(custom_start, _offset), argMax(custom_end, _offset) FROM budgets "
        "WHERE {only:String} = '' OR budget_id = {only:String} GROUP BY budget_id "
        "HAVING argMax(deleted, _offset) = 0 ORDER BY budget_id",
        params,
    )
    budgets, notes = [], []
    for budget_id, name, limit, currency, period, zone, c_start, c_end in result.rows:
        try:
            budgets.append(BudgetDefinition(
                budget_id=budget_id, name=name or budget_id, limit=limit, currency=currency,
                period=period, timezone=zone, custom_start=_utc(c_start),
                custom_end=_utc(c_end)))  # fmt: skip
        except ValidationError as exc:
            reasons = "; ".join(str(e["msg"]) for e in exc.errors())
            notes.append(f"budget {budget_id} left out: {reasons}")
    return budgets, notes


def _utc(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def _period_spend(
    w: Warehouse, current: dict[str, Period]
) -> dict[str, tuple[int, dict[int, int], int]]:
    """Per budget, of its current period: spend in nano-units, spend per day of the period
    and the latest event time (us) — what the stream's state holds for that period."""
    if not current:
        return {}
    result = w.query(
        f"SELECT budget_id, period_key, {_DAY_OF_PERIOD} AS day, sum(amount), "
        "max(toUnixTimestamp64Micro(occurred_at)) FROM allocations_in_budget_currency "
        "WHERE budget_id IN {ids:Array(String)} AND period_key IN {keys:Array(String)} "
        "AND NOT held "
        "GROUP BY budget_id, period_key, day",
        {"ids": sorted(current), "keys": sorted({p.key for p in current.values()})},
    )
    out: dict[str, tuple[int, dict[int, int], int]] = {}
    for budget_id, key, day, amount, last_us in result.rows:
        if current[budget_id].key != key:
            continue
        nanos, daily, last = out.get(budget_id, (0, {}, 0))
        daily[int(day)] = to_nanos(amount)
        out[budget_id] = (nanos + to_nanos(amount), daily, max(last, int(last_us)))
    return out


def top(w: Warehouse, filters: Filters, by: str = "model", limit: int = 10) -> Report:
    """The ``limit`` biggest drivers per currency; a share is of its currency's total."""
    column = column_of(by)
    params: dict[str, Any] = {"n": limit}
    table, money, where = _source(filters, params)
    totals = dict(w.query(f"SELECT currency, sum({money}) FROM {table} WHERE {where} "
                          "GROUP BY currency", params).rows)  # fmt: skip
    result = w.query(
        f"SELECT {column} AS key, currency, count() AS events, sum({money}) AS cost "
        f"FROM {table} WHERE {where} GROUP BY key, currency "
        "ORDER BY currency, cost DESC, key LIMIT {n:UInt32} BY currency",
        params,
    )
    rows = [[k or "-", currency, n, c, _pct(c, totals[currency]) if totals.get(currency) else ""]
            for k, currency, n, c in result.rows]  # fmt: skip
    return Report(f"top {limit} cost drivers by {by}",
                  [by, "currency", "events", "cost", "share %"], rows)  # fmt: skip
