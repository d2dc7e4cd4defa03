"""The query port's HTTP rules and its health, driven without a broker or ClickHouse."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest

from spendstream.sinks.health import WriterHealth
from spendstream.sinks.query_server import QueryServer
from spendstream.sinks.warehouse import QueryRefused, QueryResult, SinkWarehouse, WarehouseError


class FakeReader:
    def __init__(self) -> None:
        self.seen: list[str] = []

    def query(self, sql: str, parameters: dict[str, Any] | None = None) -> QueryResult:
        self.seen.append(sql)
        if "file(" in sql:
            raise QueryRefused("function file() is not allowed here")
        return QueryResult(["n"], [(1,)])

    def close(self) -> None:
        pass


@pytest.fixture
def served():
    clock = [1000.0]
    health = WriterHealth(clock=lambda: clock[0])
    reader = FakeReader()
    server = QueryServer(reader, "s3cret", health.snapshot).start()
    try:
        yield server, health, reader, clock
    finally:
        server.stop()


def test_health_turns_503_while_the_writer_fails(served):
    server, health, _, clock = served
    client = SinkWarehouse(f"http://127.0.0.1:{server.port}", "s3cret")
    health.succeeded()
    assert client.health()["ok"] is True
    clock[0] = 1005.0
    health.failed("Code: 164. DB::Exception: Cannot execute query in readonly mode")
    health.failed("Code: 164. again")
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{server.port}/health", timeout=5)
        raise AssertionError("expected 503")
    except urllib.error.HTTPError as exc:
        assert exc.code == 503
        state = json.loads(exc.read())
    assert state["writer"] == "failing" and state["failed_attempts"] == 2
    assert state["last_error"] == "Code: 164. again"
    assert state["failing_since"].startswith("1970-01-01T00:16:45")
    health.succeeded()
    assert client.health()["ok"] is True


def test_refusals_and_errors(served):
    server, _, reader, _ = served
    ok = SinkWarehouse(f"http://127.0.0.1:{server.port}", "s3cret")
    assert ok.query("SELECT 1").rows == [(1,)]
    with pytest.raises(QueryRefused, match="file"):
        ok.query("SELECT file('/etc/passwd')")
    with pytest.raises(WarehouseError, match="invalid token"):
        SinkWarehouse(f"http://127.0.0.1:{server.port}", "nope").query("SELECT 1")
    seen = len(reader.seen)
    headers = {"Host": "127.0.0.1", "Authorization": "Bearer s3cret"}
    assert server.refusal(headers, needs_token=True) is None
    assert server.refusal({**headers, "Origin": "null"}, needs_token=True)[0] == 403
    assert server.refusal({**headers, "Host": "attacker.example"}, needs_token=True)[0] == 403
    assert server.refusal({"Host": "localhost:8124"}, needs_token=True)[0] == 401
    assert server.refusal({"Host": "localhost:8124"}, needs_token=False) is None
    assert len(reader.seen) == seen  # refused requests never reach the reader
    with pytest.raises(ValueError):
        QueryServer(FakeReader(), "", lambda: {})
