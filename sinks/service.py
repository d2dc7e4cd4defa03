"""Run the sink as a service: ClickHouse writer plus, for chDB, the loopback query port."""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from typing import Any

from spendstream.config import Settings

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
    client = connect_waiting(settings)
    writer = wrap_client(client) if wrap_client else client
    sink = ClickHouseSink(settings, writer)
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
