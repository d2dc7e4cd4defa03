"""A starting sink waits for a ClickHouse server that is not up yet, then says why it gave up."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from spendstream.config import load_settings
from spendstream.sinks import warehouse
from spendstream.sinks.warehouse import WarehouseError, connect_waiting


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


def test_gives_up_on_an_unreachable_server_after_the_configured_wait(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, clickhouse_dsn="http://127.0.0.1:1/spendstream",
                             sink_startup_wait_s=20)  # fmt: skip
    fake = FakeTime()
    with pytest.raises(WarehouseError, match="is the ClickHouse server up"):
        connect_waiting(settings, sleep=fake.sleep, clock=fake.clock)
    assert fake.sleeps == [0.5, 1.0, 2.0, 4.0, 8.0]  # backoff, within the 20 s allowed
    assert sum(fake.sleeps) <= 20


def test_returns_the_client_once_the_server_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load_settings(data_dir=tmp_path, clickhouse_dsn="http://127.0.0.1:1/spendstream")
    attempts: list[int] = []
    client = object()

    def flaky(_settings: Any, **_: Any) -> object:
        attempts.append(1)
        if len(attempts) < 3:
            raise WarehouseError("connection refused")
        return client

    monkeypatch.setattr(warehouse, "connect", flaky)
    fake = FakeTime()
    assert connect_waiting(settings, sleep=fake.sleep, clock=fake.clock) is client
    assert fake.sleeps == [0.5, 1.0]


def test_embedded_chdb_errors_are_final_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load_settings(data_dir=tmp_path)

    def locked(_settings: Any, **_: Any) -> object:
        raise WarehouseError("another process holds the chDB directory")

    monkeypatch.setattr(warehouse, "connect", locked)
    fake = FakeTime()
    with pytest.raises(WarehouseError, match="chDB directory"):
        connect_waiting(settings, sleep=fake.sleep, clock=fake.clock)
    assert fake.sleeps == []
