"""ClickHouse access for the sink, the CLI and reports: chDB embedded or a server.

chDB lets one process open a data directory. The sink, when it holds the directory,
writes ``sink.json`` (pid and a loopback port) beside it and answers read-only SQL on
that port; ``open_warehouse`` sends queries there while the sink runs and opens the
directory itself otherwise. With a ClickHouse server every process connects directly.
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from spendstream.config import Settings

log = logging.getLogger("spendstream.sink")


class WarehouseError(RuntimeError):
    """ClickHouse could not be reached or refused a query; the message says what to do."""


@dataclass
class QueryResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]

    def scalar(self) -> Any:
        return self.rows[0][0] if self.rows else None

    def as_dicts(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


class Warehouse(Protocol):
    def query(self, sql: str, parameters: dict[str, Any] | None = None) -> QueryResult: ...

    def close(self) -> None: ...


def connect(settings: Settings, *, create_database: bool = True) -> Client:
    """A clickhouse-connect client on the configured DSN, database created if missing."""
    dsn = settings.effective_clickhouse_dsn
    if settings.is_embedded_clickhouse:
        settings.chdb_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if create_database:
            bootstrap = clickhouse_connect.get_client(dsn=dsn)
            bootstrap.command(f"CREATE DATABASE IF NOT EXISTS `{settings.clickhouse_database}`")
            if not settings.is_embedded_clickhouse:
                bootstrap.close()
        return clickhouse_connect.get_client(dsn=dsn, database=settings.clickhouse_database)
    except Exception as exc:
        hint = (
            "another process may hold the chDB directory (only one may open it); stop it or "
            "query through the running sink"
            if settings.is_embedded_clickhouse
            else "is the ClickHouse server up and SPENDSTREAM_CLICKHOUSE_DSN right?"
        )
        raise WarehouseError(f"cannot open ClickHouse at {_safe(dsn)}: {exc} ({hint})") from exc


def connect_waiting(
    settings: Settings,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Client:
    """``connect``, waiting up to ``sink_startup_wait_s`` (with backoff) for a ClickHouse
    server that is not up yet: a sink started with, or before, its server (compose,
    a restart) comes up instead of exiting. chDB is local: its errors are final at once."""
    if settings.is_embedded_clickhouse:
        return connect(settings)
    deadline = clock() + settings.sink_startup_wait_s
    delay = 0.5
    while True:
        try:
            return connect(settings)
        except WarehouseError as exc:
            if clock() + delay > deadline:
                raise
            log.warning("ClickHouse not ready (%s); retrying in %.1fs", exc, delay)
            sleep(delay)
            delay = min(delay * 2, 15.0)


def _safe(dsn: str) -> str:
    """DSN without its password, for messages."""
    if "@" in dsn and "://" in dsn:
        scheme, rest = dsn.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return dsn


def migrations() -> list[tuple[str, str]]:
    folder = resources.files("spendstream.sinks") / "migrations"
    files = sorted(p.name for p in folder.iterdir() if p.name.endswith(".sql"))
    return [(name.removesuffix(".sql"), (folder / name).read_text()) for name in files]


def _statements(sql: str) -> list[str]:
    lines = [line for line in sql.splitlines() if not line.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def migrate(client: Client) -> list[str]:
    """Apply pending migrations in order; safe to run again (every statement is idempotent)."""
    client.command(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version String, "
        "applied_at DateTime64(6, 'UTC') DEFAULT now64(6)) ENGINE = ReplacingMergeTree "
        "ORDER BY version"
    )
    done = {row[0] for row in client.query("SELECT version FROM schema_migrations").result_rows}
    applied = []
    for version, sql in migrations():
        if version in done:
            continue
        for index, statement in enumerate(_statements(sql)):
            # a re-run after a failure must not repeat a backfill INSERT: token-dedupe it
            token = f"migration-{version}-{index}"
            client.command(statement, settings={"insert_deduplication_token": token})
        client.insert("schema_migrations", [[version]], column_names=["version"])
        applied.append(version)
    return applied


class DirectWarehouse:
    """Queries through our own clickhouse-connect client."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def query(self, sql: str, parameters: dict[str, Any] | None = None) -> QueryResult:
        try:
            result = self.client.query(sql, parameters=parameters, settings={"readonly": 2})
        except Exception as exc:
            raise WarehouseError(_clean_error(exc)) from exc
        return QueryResult(list(result.column_names), [tuple(r) for r in result.result_rows])

    def close(self) -> None:
        self.client.close()


def _clean_error(exc: Exception) -> str:
    text = str(exc).strip()
    return text.split("\n")[0][:500] if text else type(exc).__name__


# --- talking to the sink that holds chDB --------------------------------------------------
def sink_lock_path(settings: Settings) -> Path:
    return settings.chdb_path.parent / "sink.json"


def _encode_value(value: Any) -> Any:
    if isinstance(value, Decimal):
        return {"$decimal": str(value)}
    if isinstance(value, datetime):
        return {"$datetime": value.isoformat()}
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, (list, tuple)):
        return [_encode_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _encode_value(v) for k, v in value.items()}
    return value


def _decode_value(value: Any) -> Any:
    if isinstance(value, dict):
        if "$decimal" in value:
            return Decimal(value["$decimal"])
        if "$datetime" in value:
            return datetime.fromisoformat(value["$datetime"])
        return {k: _decode_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode_value(v) for v in value]
    return value


def encode_result(result: QueryResult) -> bytes:
    """JSON that keeps Decimals exact (as strings) and datetimes as ISO text."""
    rows = [[_encode_value(v) for v in row] for row in result.rows]
    return json.dumps({"columns": result.columns, "rows": rows}).encode()


class SinkWarehouse:
    """Read-only SQL answered by the running sink over loopback HTTP."""

    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, sql: str, parameters: dict[str, Any] | None = None) -> QueryResult:
        body = json.dumps({"sql": sql, "parameters": _encode_value(parameters or {})}).encode()
        request = urllib.request.Request(
            self.url, data=body, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                data = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = json.loads(exc.read() or b"{}").get("error", str(exc))
            raise WarehouseError(detail) from None
        except (urllib.error.URLError, OSError) as exc:
            raise WarehouseError(
                f"the sink's query port {self.url} did not answer: {exc}"
            ) from None
        rows = [tuple(_decode_value(v) for v in row) for row in data["rows"]]
        return QueryResult(data["columns"], rows)

    def close(self) -> None:
        pass


def running_sink_url(settings: Settings) -> str | None:
    """URL of the sink holding the chDB directory, if one is alive."""
    path = sink_lock_path(settings)
    try:
        info = json.loads(path.read_text())
        os.kill(int(info["pid"]), 0)
    except (OSError, ValueError, KeyError):
        return None
    return f"http://127.0.0.1:{int(info['port'])}/query"


def open_warehouse(settings: Settings) -> Warehouse:
    """Best way to query now: the running sink (embedded mode), else a direct client."""
    if settings.is_embedded_clickhouse:
        url = running_sink_url(settings)
        if url:
            return SinkWarehouse(url)
        if not settings.chdb_path.exists():
            raise WarehouseError(
                f"no ClickHouse data at {settings.chdb_path} yet: run the sink (`spendstream "
                "sink`) or `spendstream demo` first"
            )
    client = connect(settings)
    migrate(client)
    return DirectWarehouse(client)
