"""``spendstream alerts``: list, tail (-f), ack and resolve."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.table import Table

from spendstream.cli.base import (
    CliError,
    _read_budgets,
    _run,
    _settings,
    broker_check_s,
    console,
    err,
)
from spendstream.render import alert_line

alerts_app = typer.Typer(
    help="Budget alerts: list, follow (tail), acknowledge, resolve.", no_args_is_help=True
)


#: the alert kinds (``BudgetAlert.kind``)
ALERT_KINDS = ("threshold", "exceeded", "forecast", "anomaly")


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
        wait_for_broker(settings.bootstrap_servers, broker_check_s(settings))
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
