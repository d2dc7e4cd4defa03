"""`spendstream budgets status --watch`: the view it renders, without a broker."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from rich.console import Console
from typer.testing import CliRunner

from spendstream.cli import app
from spendstream.render import status_table, status_view
from spendstream.schemas.models import BudgetStatus

NOW = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
OCTOBER = datetime(2026, 10, 1, tzinfo=UTC)


def status(budget_id: str, spent: str, limit: str, state: str, *, period: str = "2026-11",
           start: datetime = datetime(2026, 11, 1, tzinfo=UTC), **extra) -> BudgetStatus:  # fmt: skip
    return BudgetStatus(
        budget_id=budget_id, budget_name=budget_id.title(), period_key=period,
        period_start=start, period_end=start + timedelta(days=30), spent=Decimal(spent),
        limit=Decimal(limit), currency="USD", event_count=7, state=state, updated_at=NOW,
        **extra,
    )  # fmt: skip


def render(renderable) -> str:
    console = Console(record=True, width=160, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(renderable)
    console.file.close()
    return console.export_text()


def test_watch_view_shows_exact_figures_and_counts_states():
    statuses = [
        status("acme", "95.123456789", "100", "critical"),
        status("acme-ml", "15", "30", "warning"),
        status("beta", "0.000000001", "50", "normal"),
        status("gamma", "120.5", "100", "exceeded"),
        # an older period of gamma that was fine: the latest period decides the count
        status("gamma", "10", "100", "normal", period="2026-10", start=OCTOBER),
    ]
    text = render(status_view(statuses, now=NOW))
    header = text.splitlines()[0]
    assert "4 budgets: 1 warning, 1 critical, 1 exceeded" in header
    assert NOW.astimezone().strftime("%Y-%m-%d %H:%M:%S") in header
    cells = [[c.strip() for c in line.strip("│ ").split("│")]
             for line in text.splitlines() if line.startswith("│ ")]  # fmt: skip
    rows = {(row[0], row[1]): row for row in cells}
    # budget, period, spent, limit, %, state, events: money exact to the nano-unit
    assert rows[("acme", "2026-11")] == ["acme", "2026-11", "95.123456789 USD", "100", "95.12",
                                        "critical", "7"]  # fmt: skip
    assert rows[("acme-ml", "2026-11")][2:6] == ["15 USD", "30", "50.00", "warning"]
    assert rows[("beta", "2026-11")][2:6] == ["0.000000001 USD", "50", "0.00", "normal"]
    assert rows[("gamma", "2026-11")][2:6] == ["120.5 USD", "100", "120.50", "exceeded"]
    assert ("gamma", "2026-10") in rows


def test_watch_view_of_one_budget_is_its_detail():
    one = status("acme", "95", "100", "critical", burn_rate_per_day=Decimal("31.666666666"),
                 active_alerts=["acme:2026-11:threshold:50", "acme:2026-11:threshold:90"])  # fmt: skip
    text = render(status_view([one], budget_id="acme", now=NOW,
                              resolved={"acme:2026-11:threshold:50"}))  # fmt: skip
    assert "1 budget: 0 warning, 1 critical, 0 exceeded" in text.splitlines()[0]
    assert "status of acme" in text
    assert "95 USD" in text and "95.00% (critical)" in text and "31.6667" in text
    assert "threshold:90" in text and "threshold:50" not in text


def test_watch_view_without_statuses_says_it_waits():
    text = render(status_view([], now=NOW))
    assert "0 budgets: 0 warning, 0 critical, 0 exceeded" in text
    assert "no status for any budget yet" in text
    assert "no status for budget 'x' yet" in render(status_view([], budget_id="x", now=NOW))


def test_watch_interval_is_checked_before_kafka_is_touched(tmp_path):
    result = CliRunner().invoke(
        app, ["budgets", "status", "--watch", "--interval", "0"],
        env={"SPENDSTREAM_DATA_DIR": str(tmp_path)},
    )  # fmt: skip
    assert result.exit_code == 1
    assert "--interval must be between 0.1 and 3600 seconds" in result.output


def test_the_table_shows_what_waits_for_an_exchange_rate():
    waiting = status("eu", "40", "100", "normal").model_copy(
        update={"currency": "EUR", "held_allocations": 2, "held_amounts": {"USD": Decimal("7.5")}}
    )
    text = render(status_table([waiting, status("acme", "10", "100", "normal")]))
    assert "waiting for a rate" in text and "2 (7.5 USD)" in text and "40 EUR" in text
