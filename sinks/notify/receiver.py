"""A small webhook receiver that verifies signatures and keeps what it got, on loopback.

The demo delivers its alerts here and checks the count; it is also a worked example of
what a receiver does: verify the signature over the raw body, then dedupe on the
idempotency key (a retry or a replay may deliver an alert more than once).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .channels import verify_signature


class WebhookReceiver:
    def __init__(self, secret: str, host: str = "127.0.0.1", port: int = 0) -> None:
        self.secret = secret
        self.alerts: dict[str, dict[str, Any]] = {}  # idempotency key -> alert (or digest)
        self.requests = 0
        self.rejected = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                good = verify_signature(
                    receiver.secret,
                    self.headers.get("X-Spendstream-Timestamp", ""),
                    body,
                    self.headers.get("X-Spendstream-Signature", ""),
                )
                with receiver.lock:
                    receiver.requests += 1
                    if good:
                        key = self.headers.get("Idempotency-Key", "")
                        receiver.alerts.setdefault(key, json.loads(body))
                    else:
                        receiver.rejected += 1
                self.send_response(204 if good else 401)  # 4xx: the sender will not retry
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.url = f"http://{host}:{self.server.server_port}/spendstream"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def received(self) -> dict[str, dict[str, Any]]:
        with self.lock:
            return dict(self.alerts)
