"""Reports on top of ClickHouse: summary, trend, compare, projection, top cost drivers.

Every report is SQL over the same tables analysts query (``FINAL`` for exact money), run
through a Warehouse (the running sink's query port, a direct chDB client or a server),
and comes back as a Report that renders as a table, CSV, JSON or Markdown.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from .warehouse import Warehouse

#: Dimensions a report may group or filter by -> column of priced_usage.
DIMENSIONS = {
    "source": "source",
    "provider": "provider",
    "model": "model",
    "org": "org",
    "team": "team",
    "project": "project",
    "user": "user",
    "department": "department",
    "feature": "feature",
    "platform": "platform",
    "workflow": "workflow_id",
    "actor": "actor_id",
    "category": "category",
}
FORMATS = ("table", "csv", "json", "md")


class ReportError(ValueError):
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
    try:
        return DIMENSIONS[dimension]
    except KeyError:
        raise ReportError(
            f"unknown dimension '{dimension}'; use one of {', '.join(DIMENSIONS)}"
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
    """(table, money column, where) — allocations when a budget is named, else usage."""
    if filters.budget:
        params["budget"] = filters.budget
        where = filters.clause(params) + " AND budget_id = {budget:String}"
        return "cost_allocations", "amount", where
    return "priced_usage", "cost", filters.clause(params)


def summary(w: Warehouse, filters: Filters) -> Report:
    params: dict[str, Any] = {}
    table, money, where = _source(filters, params)
    total = w.query(
        f"SELECT count(), sum({money}), min(occurred_at), max(occurred_at) "
        f"FROM {table} FINAL WHERE {where}",
        params,
    ).rows[0]
    by = w.query(
        f"SELECT source, if(provider = '', '-', provider) AS provider, count() AS events, "
        f"sum({money}) AS cost FROM {table} FINAL WHERE {where} "
        "GROUP BY source, provider ORDER BY cost DESC, source, provider",
        params,
    )
    rows = [list(r) for r in by.rows]
    rows.append(["total", "", total[0], total[1] or Decimal(0)])
    notes = [f"events from {total[2]} to {total[3]}"] if total[0] else ["no events match"]
    return Report("spend summary", ["source", "provider", "events", "cost"], rows, notes)


def trend(w: Warehouse, filters: Filters, granularity: str = "day") -> Report:
    bucket = {"day": "toDate", "week": "toMonday", "month": "toStartOfMonth"}.get(granularity)
    if bucket is None:
        raise ReportError("granularity must be day, week or month")
    params: dict[str, Any] = {}
    table, money, where = _source(filters, params)
    result = w.query(
        f"SELECT {bucket}(occurred_at) AS bucket, count() AS events, sum({money}) AS cost "
        f"FROM {table} FINAL WHERE {where} GROUP BY bucket ORDER BY bucket",
        params,
    )
    rows = []
    previous: Decimal | None = None
    for bucket_start, events, cost in result.rows:
        change = "" if previous in (None, Decimal(0)) else _pct(cost - previous, previous)
        rows.append([bucket_start, events, cost, change])
        previous = cost
    return Report(f"spend trend per {granularity}", [granularity, "events", "cost", "change %"],
                  rows)  # fmt: skip


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
        f"SELECT {column} AS key, "
        f"sumIf({money}, occurred_at >= {{ps:DateTime64(6, 'UTC')}} AND occurred_at < "
        f"{{pe:DateTime64(6, 'UTC')}}) AS previous, "
        f"sumIf({money}, occurred_at >= {{cs:DateTime64(6, 'UTC')}} AND occurred_at < "
        f"{{ce:DateTime64(6, 'UTC')}}) AS current "
        f"FROM {table} FINAL WHERE {where} GROUP BY key HAVING previous != 0 OR current != 0 "
        "ORDER BY current DESC, key",
        params,
    )
    rows = [
        [k or "-", prev, cur, cur - prev, _pct(cur - prev, prev)] for k, prev, cur in result.rows
    ]
    tp = sum((r[1] for r in rows), Decimal(0))
    tc = sum((r[2] for r in rows), Decimal(0))
    rows.append(["total", tp, tc, tc - tp, _pct(tc - tp, tp)])
    title = f"{period} to date vs the same days of the previous {period}, by {by}"
    return Report(title, [by, "previous", "current", "change", "change %"], rows,
                  [f"current: {cur_start} .. {today}; previous: {prev_start} .. "
                   f"{min(prev_end, cur_start) - timedelta(days=1)}"])  # fmt: skip


def _dt(day: date) -> datetime:
    return datetime.combine(day, datetime.min.time(), UTC)


def projection(w: Warehouse, filters: Filters, today: date | None = None) -> Report:
    """Month-end projection from the month so far, per budget when budgets exist."""
    today = today or datetime.now(UTC).date()
    start = _month_start(today)
    next_month = _month_start(start + timedelta(days=32))
    elapsed_days = (today - start).days + 1
    month_days = (next_month - start).days
    params: dict[str, Any] = {"s": _dt(start), "e": _dt(today + timedelta(days=1))}
    table, money, where = _source(filters, params)
    spent = w.query(
        f"SELECT sum({money}) FROM {table} FINAL WHERE {where} AND occurred_at >= "
        "{s:DateTime64(6, 'UTC')} AND occurred_at < {e:DateTime64(6, 'UTC')}",
        params,
    ).scalar() or Decimal(0)
    daily = (spent / elapsed_days).quantize(Decimal("0.000000001"))
    projected = (spent * month_days / elapsed_days).quantize(Decimal("0.000000001"))
    rows: list[list[Any]] = [["(selection)", spent, daily, projected, "", ""]]
    budgets = w.query(
        "SELECT a.budget_id, sum(a.amount), any(b.`limit`) FROM cost_allocations AS a FINAL "
        "LEFT JOIN (SELECT budget_id, argMax(`limit`, _offset) AS `limit`, "
        "argMax(deleted, _offset) AS deleted FROM budgets GROUP BY budget_id) AS b "
        "USING budget_id WHERE a.occurred_at >= {s:DateTime64(6, 'UTC')} AND a.occurred_at < "
        "{e:DateTime64(6, 'UTC')} AND b.deleted = 0 "
        + ("AND a.budget_id = {budget:String} " if filters.budget else "")
        + "GROUP BY a.budget_id ORDER BY a.budget_id",
        params,
    )
    for budget_id, b_spent, limit in budgets.rows:
        b_proj = (b_spent * month_days / elapsed_days).quantize(Decimal("0.000000001"))
        verdict = "over" if limit and b_proj > limit else "within"
        rows.append([budget_id, b_spent, (b_spent / elapsed_days).quantize(Decimal(
            "0.000000001")), b_proj, limit, verdict])  # fmt: skip
    return Report(
        f"projection for {start:%Y-%m} (day {elapsed_days} of {month_days})",
        ["scope", "spent", "per day", "projected", "limit", "verdict"],
        rows,
        ["linear run rate over the month so far; budgets use their allocations"],
    )


def top(w: Warehouse, filters: Filters, by: str = "model", limit: int = 10) -> Report:
    column = column_of(by)
    params: dict[str, Any] = {"n": limit}
    table, money, where = _source(filters, params)
    total = w.query(f"SELECT sum({money}) FROM {table} FINAL WHERE {where}", params).scalar()
    result = w.query(
        f"SELECT {column} AS key, count() AS events, sum({money}) AS cost FROM {table} FINAL "
        f"WHERE {where} GROUP BY key ORDER BY cost DESC, key LIMIT {{n:UInt32}}",
        params,
    )
    rows = [[k or "-", n, c, _pct(c, total) if total else ""] for k, n, c in result.rows]
    return Report(f"top {limit} cost drivers by {by}", [by, "events", "cost", "share %"], rows)
