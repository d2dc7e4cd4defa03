"""Run the sink as a service: ClickHouse writer plus, for chDB, the loopback query port."""

from __future__ import annotations

import errno
import logging
import threading

from spendstream.config import Settings

from .clickhouse_sink import ClickHouseSink, SinkStats
from .query_server import QueryServer
from .warehouse import DirectWarehouse, connect, sink_lock_path

log = logging.getLogger("spendstream.sink")


def run_sink(
    settings: Settings, *, idle_exit_s: float | None = None, handle_signals: bool = True
) -> SinkStats:
    client = connect(settings)
    lock = threading.Lock()
    sink = ClickHouseSink(settings, client, client_lock=lock)
    if handle_signals:
        sink.install_signal_handlers()
    server = None
    lock_file = sink_lock_path(settings)
    if settings.is_embedded_clickhouse:
        try:
            server = QueryServer(DirectWarehouse(client), lock, settings.sink_query_port)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            log.warning("query port %s in use; using a free one", settings.sink_query_port)
            server = QueryServer(DirectWarehouse(client), lock, 0)
        server.start()
        server.write_lock_file(lock_file)
        log.info("sink answers SQL on 127.0.0.1:%s while it holds %s", server.port,
                 settings.chdb_path)  # fmt: skip
    try:
        return sink.run(idle_exit_s=idle_exit_s)
    finally:
        if server is not None:
            server.stop()
            lock_file.unlink(missing_ok=True)
