"""A minimal Confluent Schema Registry (two endpoints) for tests.

The real registry is not published to Maven Central, so tests use this stand-in for the
two calls spendstream makes; the wire format itself is checked byte for byte.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class RegistryStub:
    def __init__(self) -> None:
        self.schemas: dict[int, str] = {}
        self.subjects: dict[str, list[int]] = {}
        self.requests: list[str] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:  # noqa: N802
                stub.requests.append(f"POST {self.path}")
                parts = self.path.strip("/").split("/")
                if len(parts) != 3 or parts[0] != "subjects" or parts[2] != "versions":
                    self._send(404, {"error_code": 404, "message": "not found"})
                    return
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                text = body["schema"]
                known = {schema: sid for sid, schema in stub.schemas.items()}
                sid = known.get(text) or len(stub.schemas) + 1
                stub.schemas[sid] = text
                stub.subjects.setdefault(parts[1], []).append(sid)
                self._send(200, {"id": sid})

            def do_GET(self) -> None:  # noqa: N802
                stub.requests.append(f"GET {self.path}")
                parts = self.path.strip("/").split("/")
                if (
                    len(parts) == 3
                    and parts[:2] == ["schemas", "ids"]
                    and int(parts[2]) in stub.schemas
                ):
                    self._send(200, {"schema": stub.schemas[int(parts[2])]})
                else:
                    self._send(404, {"error_code": 40403, "message": "Schema not found"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
