"""Read-only SQL over loopback HTTP, served by the sink while it holds the chDB directory.

chDB admits one process per data directory, so the process that writes is the one that
answers analysts' queries and reports. Bound to 127.0.0.1 only; every query runs with
``readonly=2`` (settings may change, data may not).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from .warehouse import DirectWarehouse, WarehouseError, _decode_value, encode_result

log = logging.getLogger("spendstream.query")


class QueryServer:
    def __init__(self, warehouse: DirectWarehouse, lock: threading.Lock, port: int = 0) -> None:
        self.warehouse = warehouse
        self.lock = lock
        handler = self._handler()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="query", daemon=True)

    def start(self) -> QueryServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def write_lock_file(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "port": self.port}))
        tmp.replace(path)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug(fmt, *args)

            def _reply(self, code: int, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802
                if self.path == "/health":
                    self._reply(200, b'{"ok": true}')
                else:
                    self._reply(404, b'{"error": "POST /query"}')

            def do_POST(self) -> None:  # noqa: N802
                if self.path != "/query":
                    self._reply(404, b'{"error": "POST /query"}')
                    return
                try:
                    length = int(self.headers.get("Content-Length", "0"))
                    request = json.loads(self.rfile.read(length) or b"{}")
                    sql = request["sql"]
                    params = _decode_value(request.get("parameters") or {})
                except (ValueError, KeyError, TypeError):
                    self._reply(400, b'{"error": "body must be JSON {\\"sql\\": \\"...\\"}"}')
                    return
                try:
                    with server.lock:
                        result = server.warehouse.query(sql, params or None)
                except WarehouseError as exc:
                    self._reply(400, json.dumps({"error": str(exc)}).encode())
                    return
                self._reply(200, encode_result(result))

        return Handler
