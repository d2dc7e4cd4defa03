"""Run the sink as a service: ClickHouse writer plus, for chDB, the loopback query port, and
its metrics port (``/metrics``, ``/healthz``, ``/readyz``; README, "Metrics and health")."""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from typing import Any

from prometheus_client.core import CounterMetricFamily, Metric

from spendstream.config import Settings
from spendstream.metrics import histogram_family, lag_family, registry_of, start_health_server

from .clickhouse_sink import ClickHouseSink, SinkStats
from .query_server import QueryServer
from .warehouse import SinkEndpoint, connect_waiting, open_reader, sink_lock_path

log = logging.getLogger("spendstream.sink")


def run_sink(
    settings: Settings,
    *,
    idle_exit_s: float | None = None,
    handle_signals: bool = True,
    wrap_client: Callable[[Any], Any] | None = None,
) -> SinkStats:
    """``wrap_client`` wraps the writer's client only (the fault suite injects outages
    there); queries on the loopback port run in a read-only session of their own."""
    watch = SinkWatch(settings)
    metrics = start_health_server(registry_of(watch.families), watch.not_ready,
                                  settings.sink_metrics_port, settings.sink_metrics_bind,
                                  "the sink")  # fmt: skip
    try:
        return _run(settings, watch, idle_exit_s, handle_signals, wrap_client)
    finally:
        metrics.stop()


class SinkWatch:
    """The sink's metric families and readiness, from ``SinkStats``, ``WriterHealth`` and
    the partitions and lags the sink holds (None while ClickHouse is still connecting)."""

    def __init__(self, settings: Settings, sink: ClickHouseSink | None = None) -> None:
        self.settings = settings
        self.sink = sink

    def families(self) -> list[Metric]:
        sink = self.sink
        if sink is None:
            return []
        stats = sink.stats
        rows = CounterMetricFamily("spendstream_sink_rows", "Rows the sink stored, by table.",
                                   labels=["table"])  # fmt: skip
        stored = dict(stats.rows)
        for table in sorted(set(sink.topic_table.values()) | set(stored)):
            rows.add_metric([table], float(stored.get(table, 0)))
        return [
            rows,
            histogram_family("spendstream_sink_insert_seconds", "Seconds to write one batch "
                             "into a table, retries included.", "table",
                             dict(stats.insert_seconds)),
            CounterMetricFamily("spendstream_sink_errors", "Insert attempts that failed.",
                                value=float(stats.insert_failures)),
            CounterMetricFamily("spendstream_sink_retries", "Waits before another insert "
                                "attempt after a failure.", value=float(stats.retries)),
            CounterMetricFamily("spendstream_sink_dead_lettered", "Records the sink could not "
                                "store, sent to usage.dlq.", value=float(stats.poison)),
            lag_family([(sink.consumer_group, dict(sink.lags))]),
        ]  # fmt: skip

    def not_ready(self) -> list[str]:
        """Ready: ClickHouse takes the inserts and the sink has partitions assigned."""
        sink = self.sink
        if sink is None:
            return ["connecting to ClickHouse"]
        reasons = []
        health = sink.health.snapshot()
        if not health["ok"]:
            reasons.append(f"ClickHouse inserts failing since {health['failing_since']}: "
                           f"{health['last_error']}")  # fmt: skip
        if not sink.assigned:
            reasons.append("no partitions assigned")
        return reasons


def _run(
    settings: Settings,
    watch: SinkWatch,
    idle_exit_s: float | None,
    handle_signals: bool,
    wrap_client: Callable[[Any], Any] | None,
) -> SinkStats:
    client = connect_waiting(settings)
    writer = wrap_client(client) if wrap_client else client
    sink = watch.sink = ClickHouseSink.from_settings(settings, writer)
    if handle_signals:
        sink.install_signal_handlers()
    server = None
    lock_file = sink_lock_path(settings)
    if settings.is_embedded_clickhouse:
        token = SinkEndpoint.new_token()
        reader = open_reader(settings)
        try:
            server = QueryServer(reader, token, sink.health.snapshot, settings.sink_query_port)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            log.warning("query port %s in use; using a free one", settings.sink_query_port)
            server = QueryServer(reader, token, sink.health.snapshot, 0)
        server.start()
        SinkEndpoint(os.getpid(), server.port, token).write(lock_file)
        log.info("sink answers SQL on 127.0.0.1:%s while it holds %s", server.port,
                 settings.chdb_path)  # fmt: skip
    try:
        return sink.run(idle_exit_s=idle_exit_s)
    finally:
        if server is not None:
            server.stop()
            server.reader.close()
            lock_file.unlink(missing_ok=True)
