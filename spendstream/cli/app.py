"""The root ``spendstream`` app: one module per command group, registered here in the
order ``spendstream --help`` lists them."""

from __future__ import annotations

import sys

import typer

from spendstream.cli import alerts, budgets, demo, fx, kafka, query, services, usage
from spendstream.cli.base import err
from spendstream.config import ConfigError

app = typer.Typer(
    help="Stream processor for AI and API spend: price usage, match budgets, alert, analyse.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
# top-level commands first, then the groups (the order of `spendstream --help`)
app.add_typer(services.app)  # worker, sink, notify, status
app.add_typer(usage.app)  # check, publish, price
app.add_typer(query.app)  # sql, report
app.add_typer(demo.app)  # demo
app.add_typer(alerts.alerts_app, name="alerts")
app.add_typer(kafka.kafka_app, name="kafka")
app.add_typer(budgets.budgets_app, name="budgets")
app.add_typer(kafka.topics_app, name="topics")
app.add_typer(fx.fx_app, name="fx")


def main() -> None:
    try:
        app()
    except ConfigError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        sys.exit(1)
