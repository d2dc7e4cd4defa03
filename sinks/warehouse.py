"""ClickHouse access for the sink, the CLI and reports: chDB embedded or a server.

chDB lets one process open a data directory. The sink, when it holds the directory,
answers read-only SQL on a loopback port and writes ``sink.json`` beside it (pid, port
and a bearer token, readable by the sink's user only); ``open_warehouse`` sends queries
there while the sink runs and opens the directory itself otherwise. Either way an
embedded read runs in a session of its own (never the writer's), with ``readonly=1``
and through the guard of sql_guard.py. With a ClickHouse server every process connects
directly and the server's own users and grants apply.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from spendstream.config import Settings

from .errors import QueryRefused, WarehouseError
from .result_codec import decode_result, encode_parameters
from .sql_guard import GuardedReader, ReadPolicy

__all__ = ["QueryRefused", "WarehouseError"]

log = logging.getLogger("spendstream.sink")


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


def migrate(client: Client, steps: list[tuple[str, str]] | None = None) -> list[str]:
    """Apply pending migrations in order (``steps``: (version, SQL); all of
    sinks/migrations by default); safe to run again (every statement is idempotent)."""
    client.command(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version String, "
        "applied_at DateTime64(6, 'UTC') DEFAULT now64(6)) ENGINE = ReplacingMergeTree "
        "ORDER BY version"
    )
    done = {row[0] for row in client.query("SELECT version FROM schema_migrations").result_rows}
    applied = []
    for version, sql in migrations() if steps is None else steps:
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
    """Queries through a client of our own, each with ``readonly=2`` (data may not change).
    For a ClickHouse server, where its users and grants decide the rest."""

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


#: Session limits of an embedded reader, set before the session turns read-only: a
#: runaway analyst query must not hold the sink's engine for ever.
READER_SESSION = {"max_execution_time": 300}


class ReaderWarehouse:
    """Reads of the embedded ClickHouse in a session of their own.

    The session is not the writer's (a ``SET`` or a refused statement there once turned
    every later insert of the sink into "Cannot execute query in readonly mode"), it is
    ``readonly=1`` for good, and every statement passes the guard (sql_guard.py) first.
    """

    def __init__(self, client: Client, database: str) -> None:
        self.client = client
        for name, value in READER_SESSION.items():
            client.command(f"SET {name} = {int(value)}")
        client.command("SET readonly = 1")
        self.guard = GuardedReader(ReadPolicy(database), self._rows)

    def _rows(self, sql: str, parameters: dict[str, Any] | None) -> list[tuple[Any, ...]]:
        try:
            return [tuple(r) for r in self.client.query(sql, parameters=parameters).result_rows]
        except Exception as exc:
            raise WarehouseError(_clean_error(exc)) from exc

    def query(self, sql: str, parameters: dict[str, Any] | None = None) -> QueryResult:
        canonical = self.guard.vet(sql, parameters)
        try:
            result = self.client.query(canonical, parameters=parameters)
        except Exception as exc:
            raise WarehouseError(_clean_error(exc)) from exc
        return QueryResult(list(result.column_names), [tuple(r) for r in result.result_rows])

    def close(self) -> None:
        self.client.close()


def open_reader(settings: Settings) -> ReaderWarehouse:
    """A new read-only session on the embedded engine this process holds (or opens)."""
    return ReaderWarehouse(connect(settings), settings.clickhouse_database)


def _clean_error(exc: Exception) -> str:
    text = str(exc).strip()
    return text.split("\n")[0][:500] if text else type(exc).__name__


# --- talking to the sink that holds chDB --------------------------------------------------
def sink_lock_path(settings: Settings) -> Path:
    return settings.chdb_path.parent / "sink.json"


@dataclass(frozen=True)
class SinkEndpoint:
    """Where the running sink answers queries, and the token it wants."""

    pid: int
    port: int
    token: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write(self, path: Path) -> None:
        """Write ``sink.json`` readable by this user only (mode 0600): the token in it is
        what keeps other local users and web pages off the port."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump({"pid": self.pid, "port": self.port, "token": self.token}, out)
        tmp.replace(path)

    @staticmethod
    def new_token() -> str:
        return secrets.token_urlsafe(32)


def running_sink(settings: Settings) -> SinkEndpoint | None:
    """The sink holding the chDB directory, if one is alive (and we may read its file)."""
    try:
        info = json.loads(sink_lock_path(settings).read_text())
        endpoint = SinkEndpoint(int(info["pid"]), int(info["port"]), str(info["token"]))
        os.kill(endpoint.pid, 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return endpoint


def running_sink_url(settings: Settings) -> str | None:
    """Base URL of the running sink's port (``/query``, ``/health``), if one is alive."""
    endpoint = running_sink(settings)
    return endpoint.url if endpoint else None


def sink_warehouse(settings: Settings) -> SinkWarehouse | None:
    """Queries through the running sink, if one holds the chDB directory."""
    endpoint = running_sink(settings)
    return SinkWarehouse(endpoint.url, endpoint.token) if endpoint else None


class SinkWarehouse:
    """Read-only SQL answered by the running sink over loopback HTTP."""

    def __init__(self, base_url: str, token: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token

    def _call(self, path: str, body: bytes | None = None, timeout: float = 330) -> bytes:
        headers = {"Authorization": f"Bearer {self.token}"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.base_url + path, data=body, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return bytes(response.read())
        except urllib.error.HTTPError as exc:
            try:
                detail = json.loads(exc.read() or b"{}").get("error", str(exc))
            except ValueError:
                detail = str(exc)
            raise (QueryRefused if exc.code == 403 else WarehouseError)(detail) from None
        except (urllib.error.URLError, OSError) as exc:
            raise WarehouseError(
                f"the sink's query port {self.base_url} did not answer: {exc}"
            ) from None

    def query(self, sql: str, parameters: dict[str, Any] | None = None) -> QueryResult:
        body = json.dumps({"sql": sql, "parameters": encode_parameters(parameters or {})})
        columns, rows = decode_result(self._call("/query", body.encode()))
        return QueryResult(columns, rows)

    def health(self) -> dict[str, Any]:
        """The sink's own view of itself: is its writer inserting? (503 carries the why.)"""
        request = urllib.request.Request(self.base_url + "/health")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            body = exc.read()
        except (urllib.error.URLError, OSError) as exc:
            return {"ok": False, "error": f"the sink's port {self.base_url} did not answer: {exc}"}
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        return data if isinstance(data, dict) else {"ok": False, "error": "bad answer"}

    def close(self) -> None:
        pass


def open_warehouse(settings: Settings) -> Warehouse:
    """Best way to query now: the running sink (embedded mode), else a session of our own."""
    if settings.is_embedded_clickhouse:
        through_sink = sink_warehouse(settings)
        if through_sink is not None:
            return through_sink
        if not settings.chdb_path.exists():
            raise WarehouseError(
                f"no ClickHouse data at {settings.chdb_path} yet: run the sink (`spendstream "
                "sink`) or `spendstream demo` first"
            )
        writer = connect(settings)
        try:
            migrate(writer)
            return open_reader(settings)
        finally:
            writer.close()
    client = connect(settings)
    migrate(client)
    return DirectWarehouse(client)
