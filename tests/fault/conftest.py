"""Fault suite fixtures: its own local broker (a scenario restarts it), a scenario factory,
and the scenario -> invariants table printed at the end of the session."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from spendstream.config import Settings, load_settings
from spendstream.localkafka import LocalKafka
from spendstream.schemas.budget import BudgetDefinition

from .harness import DETAILS, INVARIANTS, RESULTS, FaultRun, free_port


@pytest.fixture(scope="session")
def fault_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    settings = load_settings(
        data_dir=tmp_path_factory.mktemp("fault-kafka"),
        kafka_local_port=free_port(),
        kafka_local_controller_port=free_port(),
    )
    broker = LocalKafka(settings)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def scenario(fault_broker: LocalKafka, tmp_path: Path) -> Iterator[Callable[..., FaultRun]]:
    runs: list[FaultRun] = []

    def make(name: str, budgets: list[BudgetDefinition], **overrides: Any) -> FaultRun:
        run_id = uuid.uuid4().hex[:8]
        options: dict[str, Any] = dict(
            data_dir=tmp_path / "data",
            kafka_bootstrap_servers=fault_broker.settings.bootstrap_servers,
            topic_prefix=f"f{run_id}.",
            app_id=f"fault-{run_id}",
            sink_group=f"sink-{run_id}",
            worker_web_port=free_port(),
            sink_query_port=0,
            topic_partitions=6,
            batch_size=500,
            batch_linger_ms=50,
            sink_batch_rows=500,
            sink_linger_ms=200,
        )
        options.update(overrides)
        settings: Settings = load_settings(**options)
        run = FaultRun(name, settings, budgets)
        runs.append(run)
        return run

    try:
        yield make
    finally:
        for run in runs:
            run.close()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not RESULTS:
        return
    width = max(len(name) for name in RESULTS)
    terminalreporter.section("fault scenarios: invariants held")
    terminalreporter.write_line(f"{'scenario':<{width}}  " + "  ".join(INVARIANTS))
    for name, held in RESULTS.items():
        cells = "  ".join(f"{('yes' if held.get(i) else 'NO'):<{len(i)}}" for i in INVARIANTS)
        terminalreporter.write_line(f"{name:<{width}}  {cells}")
    for name, details in DETAILS.items():
        terminalreporter.write_line(f"{name}:")
        for invariant, detail in details.items():
            terminalreporter.write_line(f"    {invariant}: {detail}")
