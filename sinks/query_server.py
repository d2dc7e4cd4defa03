"""Read-only SQL over loopback HTTP, served by the sink while it holds the chDB directory.

chDB admits one process per data directory, so the process that writes is the one that
answers analysts' queries and reports. What the port promises:

* reads only, of the spendstream database only, in a session that is not the writer's
  (``ReaderWarehouse``: ``readonly=1`` plus the guard of sql_guard.py) — a query can
  neither stop ingestion nor reach the host's files or the network;
* only for whoever can read ``sink.json`` (mode 0600): every request but ``GET /health``
  needs ``Authorization: Bearer <token>`` from it;
* never for a web page: a request with an ``Origin`` or a cross-site ``Sec-Fetch-Site``
  header is refused, the ``Host`` must be the loopback address (no DNS rebinding), and a
  query must be ``Content-Type: application/json`` (so a page cannot send it as a
  "simple" cross-origin request either);
* ``GET /health`` says whether the writer is inserting (503 when it is not).
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .errors import QueryRefused, WarehouseError
from .result_codec import UnsupportedValue, decode_parameters, encode_result
from .warehouse import Warehouse

log = logging.getLogger("spendstream.query")

#: Largest request body the port reads (a statement and its parameters).
MAX_BODY = 1 << 20
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")


class QueryServer:
    def __init__(
        self,
        reader: Warehouse,
        token: str,
        health: Callable[[], dict[str, Any]],
        port: int = 0,
    ) -> None:
        if not token:
            raise ValueError("the query port needs a token")
        self.reader = reader
        self.token = token
        self.health = health
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self.port = int(self.httpd.server_address[1])
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="query", daemon=True)

    def start(self) -> QueryServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def refusal(self, headers: Any, *, needs_token: bool) -> tuple[int, str] | None:
        """Why a request may not be served, or None. Pure, for unit tests."""
        if headers.get("Origin") is not None:
            return 403, "cross-origin requests are refused"
        if headers.get("Sec-Fetch-Site", "none") not in ("none", "same-origin"):
            return 403, "cross-site requests are refused"
        host = (headers.get("Host") or "").rsplit(":", 1)[0]
        if host not in LOOPBACK_HOSTS:
            return 403, f"Host must be the loopback address, not '{host}'"
        if needs_token:
            scheme, _, given = (headers.get("Authorization") or "").partition(" ")
            if scheme.lower() != "bearer" or not given:
                return 401, "missing 'Authorization: Bearer <token>' (the token is in sink.json)"
            if not hmac.compare_digest(given.strip().encode(), self.token.encode()):
                return 401, "invalid token"
        return None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "spendstream-sink"
            sys_version = ""

            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug(fmt, *args)

            def _reply(self, code: int, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def _error(self, code: int, message: str) -> None:
                self._reply(code, json.dumps({"error": message}).encode())

            def _refused(self, *, needs_token: bool) -> bool:
                refusal = server.refusal(self.headers, needs_token=needs_token)
                if refusal:
                    self._error(*refusal)
                return refusal is not None

            def do_GET(self) -> None:  # noqa: N802
                if self.path != "/health":
                    self._error(404, "POST /query or GET /health")
                elif not self._refused(needs_token=False):
                    state = server.health()
                    self._reply(200 if state.get("ok") else 503, json.dumps(state).encode())

            def do_POST(self) -> None:  # noqa: N802
                if self.path != "/query":
                    self._error(404, "POST /query or GET /health")
                    return
                if self._refused(needs_token=True):
                    return
                if self.headers.get_content_type() != "application/json":
                    self._error(415, "Content-Type must be application/json")
                    return
                try:
                    length = int(self.headers.get("Content-Length", "0"))
                except ValueError:
                    length = -1
                if not 0 <= length <= MAX_BODY:
                    # read (a bounded amount of) it first, so the client sees the answer
                    # instead of a broken pipe
                    self.rfile.read(min(max(length, 0), 4 * MAX_BODY))
                    self.close_connection = True
                    self._error(413, f"request body must be at most {MAX_BODY} bytes")
                    return
                try:
                    request = json.loads(self.rfile.read(length) or b"{}")
                    sql = request["sql"]
                    if not isinstance(sql, str):
                        raise TypeError
                    params = decode_parameters(request.get("parameters") or {})
                except (ValueError, KeyError, TypeError, RecursionError):
                    self._error(400, 'body must be JSON {"sql": "...", "parameters": {...}}')
                    return
                try:
                    result = server.reader.query(sql, params or None)
                    body = encode_result(result.columns, result.rows)
                except QueryRefused as exc:
                    self._error(403, str(exc))
                    return
                except WarehouseError as exc:
                    self._error(400, str(exc))
                    return
                except UnsupportedValue as exc:
                    self._error(500, f"result cannot be sent: {exc}")
                    return
                self._reply(200, body)

        return Handler
