"""The newcomer's first command, run as they would run it: nothing configured."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from spendstream.config import load_settings
from spendstream.localkafka import LocalKafka
from tests.integration.conftest import free_port

pytestmark = pytest.mark.integration


def run_cli(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "spendstream.cli", *args],
        env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def clean_env(tmp_path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPENDSTREAM_")}
    env.update(
        SPENDSTREAM_DATA_DIR=str(tmp_path / "home"),
        # only the ports differ from a fresh machine, so the suite's own broker is untouched
        SPENDSTREAM_KAFKA_LOCAL_PORT=str(free_port()),
        SPENDSTREAM_KAFKA_LOCAL_CONTROLLER_PORT=str(free_port()),
        SPENDSTREAM_SINK_QUERY_PORT="0",
        COLUMNS="200",
        **extra,
    )
    return env


def test_demo_runs_end_to_end_and_cleans_up(tmp_path):
    env = clean_env(tmp_path)
    result = run_cli("demo", "--events", "250", env=env)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "published 250 events costing" in out
    assert "equals the published total" in out
    assert "agree to the nano-unit" in out
    assert "exactly one per crossed tier" in out
    # its alerts reached a webhook through `spendstream notify`, counted and verified
    assert "alerts delivered to the local webhook" in out and "every signature verified" in out
    assert "Traceback" not in out
    # The demo started the broker itself, so it stopped it again.
    settings = load_settings(data_dir=tmp_path / "home",
                             kafka_local_port=int(env["SPENDSTREAM_KAFKA_LOCAL_PORT"]),
                             kafka_local_controller_port=int(
                                 env["SPENDSTREAM_KAFKA_LOCAL_CONTROLLER_PORT"]))  # fmt: skip
    assert LocalKafka(settings).status()["running"] is False
    # ...and the data stays queryable afterwards, straight from chDB.
    sql = run_cli("sql", "SELECT count() AS n FROM priced_usage", "--format", "csv", env=env)
    assert sql.returncode == 0, sql.stderr
    assert sql.stdout.strip().splitlines() == ["n", "250"]
    # ...including the delivery log of those alerts
    log = run_cli("sql", "SELECT countIf(outcome = 'delivered') > 0 AS any, countIf(outcome "
                  "!= 'delivered') AS bad FROM alert_deliveries", "--format", "csv", env=env)  # fmt: skip
    assert log.returncode == 0, log.stderr
    assert log.stdout.strip().splitlines() == ["any,bad", "1,0"]


def test_demo_against_unreachable_kafka_fails_with_a_clear_message(tmp_path):
    env = clean_env(tmp_path, SPENDSTREAM_KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}",
                    SPENDSTREAM_KAFKA_CHECK_S="1")  # users wait 15 s  # fmt: skip
    result = run_cli("demo", "--events", "10", env=env, timeout=120)
    assert result.returncode == 1
    assert (
        "did not answer within 1s" in " ".join(result.stderr.split())
        and "spendstream kafka start" in result.stderr
    )
    assert "Traceback" not in result.stdout + result.stderr
