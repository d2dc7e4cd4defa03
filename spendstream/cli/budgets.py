"""``spendstream budgets``: apply, list, show, delete, history and status (--watch)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import RenderableType
from rich.table import Table

from spendstream.cli.base import CliError, _read_budgets, _run, _settings, console
from spendstream.config import Settings
from spendstream.render import status_detail, status_table, status_view
from spendstream.schemas.money import plain

budgets_app = typer.Typer(help="Budget definitions.", no_args_is_help=True)


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
