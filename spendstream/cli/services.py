"""The long-running services (``worker``, ``sink``, ``notify``) and ``status``, their
health at a glance."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from spendstream.cli.base import CliError, _run, _settings, broker_check_s, console
from spendstream.config import Settings

#: its commands join the root app unnamed (app.py)
app = typer.Typer()


@app.command()
def worker(
    stage: Annotated[str | None, typer.Option(hidden=True, help="Internal: run one stage.")] = None,
) -> None:
    """Run a stream worker: the price stage (price, dedupe, match) and the aggregator
    (spend per budget and period, alerts, status, HTTP API), each a supervised process
    started again if it crashes. Run several workers for scale-out (same groups)."""

    def body() -> None:
        import os

        settings = _settings()
        if stage is None:
            from spendstream.processes import supervise
            from spendstream.topics import ensure_topics, wait_for_broker

            wait_for_broker(settings.bootstrap_servers, 60)
            ensure_topics(settings)  # before either stage: no stage races topic creation
            if settings.budgets_file:
                from spendstream.budget_history import default_actor
                from spendstream.producer import publish_budgets
                from spendstream.schemas.budget import load_budgets_file

                budgets = load_budgets_file(settings.budgets_file)
                publish_budgets(settings, budgets, actor=default_actor(),
                                note="SPENDSTREAM_BUDGETS_FILE at worker start")  # fmt: skip
                logging.getLogger("spendstream").info("published %d budgets", len(budgets))
            me = [sys.executable, "-m", "spendstream.cli", "worker", "--stage"]
            env = {**os.environ, "SPENDSTREAM_WORKER_CHILD": "1"}
            code = supervise({"price": [*me, "price"], "aggregate": [*me, "aggregate"]}, env)
            raise typer.Exit(code)
        from spendstream.streams.runtime import tune_gc

        tune_gc(settings.worker_gc_threshold)
        if stage == "price":
            from spendstream.streams.configs import PriceStageConfig
            from spendstream.streams.price_worker import run_price_worker

            run_price_worker(PriceStageConfig.from_settings(settings))
            return
        if stage != "aggregate":
            raise CliError(f"unknown stage '{stage}': price or aggregate")
        from faust import Worker

        from spendstream.streams.app import create_worker
        from spendstream.streams.configs import AggregatorConfig

        aggregator = create_worker(AggregatorConfig.from_settings(settings))
        aggregator.start_feed()
        sys.argv = [sys.argv[0]]
        Worker(
            aggregator.app, loglevel=settings.log_level.lower(), quiet=True
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


@app.command()
def notify(
    rules: Annotated[
        Path | None,
        typer.Option(help="Rules file (default: SPENDSTREAM_NOTIFY_RULES).", show_default=False),
    ] = None,
    check: Annotated[
        bool, typer.Option("--check", help="Only check the rules file and list its routes.")
    ] = False,
    idle_exit: Annotated[
        float | None, typer.Option(help="Exit after this many idle seconds (tests, backfills).")
    ] = None,
) -> None:
    """Deliver budget alerts to webhooks, Slack and email by routing rules, with retries,
    rate limits, digests and a delivery log (alert-deliveries, alerts.dlq)."""

    def body() -> None:
        from spendstream.sinks.notify.config import load_config

        settings = _settings()
        path = rules or settings.notify_rules
        if path is None:
            raise CliError(
                "no rules file: pass --rules FILE or set SPENDSTREAM_NOTIFY_RULES "
                "(README, section 'Alert delivery', has an example)"
            )
        config = load_config(path)
        if check:
            for name, channel in sorted(config.channels.items()):
                console.print(f"channel {name}: {channel.type}", highlight=False)
            for i, rule in enumerate(config.rules):
                what = "no other rule matched" if rule.default else rule.match.describe()
                console.print(f"rule {i} {rule.name!r}: {what} -> {', '.join(rule.channels)}",
                              highlight=False, soft_wrap=True)  # fmt: skip
            return
        from spendstream.sinks.notify.service import NotifyService
        from spendstream.sinks.notify.service_config import NotifyConfig
        from spendstream.topics import ensure_topics, wait_for_broker

        wait_for_broker(settings.bootstrap_servers, 60)
        ensure_topics(settings)
        service = NotifyService(NotifyConfig.from_settings(settings), config)
        service.install_signal_handlers()
        stats = service.run(idle_exit_s=idle_exit)
        console.print(f"notify stopped: {stats}", highlight=False)

    _run(body)


@app.command("status")
def status_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object, for machines.")] = False,
) -> None:
    """Health at a glance: Kafka reachable, worker and sink consumer lag per topic, the
    sink's writer, the last alert. Exit code 1 when Kafka cannot be reached.

    Lag is the records a group has not committed (a group that never committed lags by
    the whole topic); in --json a topic that does not exist has lag null."""

    def body() -> None:
        from confluent_kafka import KafkaError, KafkaException

        from spendstream.readback import decode_alert, read_newest
        from spendstream.sinks.tables import sink_inputs
        from spendstream.topics import (
            sink_group,
            topic_lags,
            wait_for_broker,
            worker_group,
            worker_lags,
        )

        settings = _settings()
        address = settings.bootstrap_servers
        wait_for_broker(address, broker_check_s(settings))
        try:
            worker_lag = worker_lags(settings)
            sink_lag = topic_lags(settings, sink_group(settings), sink_inputs(settings.topics))
            alert = read_newest(settings, settings.topics.alerts, decode_alert)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            reason = error.str() if isinstance(error, KafkaError) else str(exc)
            raise CliError(f"Kafka at {address} stopped answering: {reason}") from None
        report = {
            "broker": {"address": address, "reachable": True},
            "worker": {"group": worker_group(settings), "lag": worker_lag,
                       "total_lag": sum(v or 0 for v in worker_lag.values()),
                       "http": _worker_http(settings)},
            "sink": {"group": sink_group(settings), "lag": sink_lag,
                     "total_lag": sum(v or 0 for v in sink_lag.values()),
                     **_sink_process(settings)},
            "last_alert": None if alert is None else {
                "alert_id": alert.alert_id, "budget_id": alert.budget_id, "kind": alert.kind,
                "triggered_at": alert.triggered_at.isoformat(), "message": alert.message},
        }  # fmt: skip
        if as_json:
            print(json.dumps(report, indent=2))
            return
        _print_status(report)

    _run(body)


def _worker_http(settings: Settings) -> dict[str, Any]:
    """Whether a worker answers on the configured web port (lag alone cannot tell an idle
    pipeline from a stopped one)."""
    from spendstream.processes import worker_metrics

    metrics = worker_metrics(settings.worker_web_port)
    return {"port": settings.worker_web_port, "answering": metrics is not None}


def _sink_process(settings: Settings) -> dict[str, Any]:
    """The sink as ``sink.json`` and its ``GET /health`` describe it (embedded ClickHouse);
    with a server the sink has no port to ask."""
    if not settings.is_embedded_clickhouse:
        return {"running": None, "note": "ClickHouse server: the sink has no query port; "
                "see its lag"}  # fmt: skip
    from spendstream.sinks.warehouse import SinkWarehouse, running_sink

    endpoint = running_sink(settings)
    if endpoint is None:
        return {"running": False}
    health = SinkWarehouse(endpoint.url, endpoint.token).health()
    return {"running": True, "pid": endpoint.pid, "port": endpoint.port, "health": health}


def _print_status(report: dict[str, Any]) -> None:
    worker, sink = report["worker"], report["sink"]
    console.print(f"broker      reachable at {report['broker']['address']}", highlight=False)
    http = worker["http"]
    console.print(f"worker      group {worker['group']}; HTTP on port {http['port']}: "
                  + ("answering" if http["answering"] else "not answering"),
                  highlight=False)  # fmt: skip
    if sink["running"] is None:
        state = sink["note"]
    elif not sink["running"]:
        state = "not running"
    else:
        health = sink["health"]
        verdict = "healthy" if health.get("ok") else "NOT healthy"
        said = ", ".join(f"{k} {v}" for k, v in health.items() if k != "ok")  # what it says
        state = f"running (pid {sink['pid']}, port {sink['port']}); {verdict}: {said}"
    console.print(f"sink        group {sink['group']}; {state}", highlight=False, markup=False)
    table = Table("topic", "worker lag", "sink lag", title="consumer lag (records not committed)")
    topics = list(dict.fromkeys([*worker["lag"], *sink["lag"]]))

    def cell(lags: dict[str, int | None], topic: str) -> str:
        if topic not in lags:
            return ""
        return "missing" if lags[topic] is None else str(lags[topic])

    for topic in topics:
        table.add_row(topic, cell(worker["lag"], topic), cell(sink["lag"], topic))
    table.add_row("[bold]total[/bold]", str(worker["total_lag"]), str(sink["total_lag"]))
    console.print(table)
    if None in [*worker["lag"].values(), *sink["lag"].values()]:
        console.print("missing topics: create them with `spendstream topics create` (a worker "
                      "or the sink also does at start)")  # fmt: skip
    alert = report["last_alert"]
    if alert is None:
        console.print("last alert  none")
    else:
        console.print(f"last alert  {alert['alert_id']} at {alert['triggered_at']}: "
                      f"{alert['message']}", highlight=False, markup=False)  # fmt: skip
