"""Confluent Schema Registry, when one is configured: register writer schemas, fetch by id.

Without a registry the wire format is Avro single-object encoding and nothing here runs.
With one, producers frame records as ``00`` + 4-byte schema id (subject ``<topic>-value``,
Confluent's TopicNameStrategy) and readers resolve unknown ids through the registry.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from typing import Any

from spendstream.errors import SpendstreamError


class RegistryError(SpendstreamError, RuntimeError):
    pass


class RegistryClient:
    def __init__(self, url: str, timeout: float = 10) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._ids: dict[tuple[str, str], int] = {}
        self._schemas: dict[int, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/vnd.schemaregistry.v1+json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:300]
            raise RegistryError(f"schema registry {method} {path}: {exc.code} {detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise RegistryError(
                f"schema registry at {self.url} unreachable ({exc}); check "
                "SPENDSTREAM_SCHEMA_REGISTRY_URL"
            ) from None

    def register(self, subject: str, schema: dict[str, Any]) -> int:
        """Schema id for ``schema`` under ``subject`` (registering it if new)."""
        text = json.dumps(schema, sort_keys=True)
        with self._lock:
            cached = self._ids.get((subject, text))
        if cached is not None:
            return cached
        answer = self._call("POST", f"/subjects/{subject}/versions", {"schema": text})
        schema_id = int(answer["id"])
        with self._lock:
            self._ids[(subject, text)] = schema_id
            self._schemas[schema_id] = schema
        return schema_id

    def schema(self, schema_id: int) -> dict[str, Any]:
        with self._lock:
            cached = self._schemas.get(schema_id)
        if cached is not None:
            return cached
        answer = self._call("GET", f"/schemas/ids/{schema_id}")
        schema = json.loads(answer["schema"])
        with self._lock:
            self._schemas[schema_id] = schema
        return schema
