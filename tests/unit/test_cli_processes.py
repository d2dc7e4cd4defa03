"""The CLI as a user runs it, in its own process: what reaches the terminal (librdkafka
writes to the process's stderr directly, which CliRunner cannot see) and real chDB."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest


def closed_port() -> int:
    """A port nothing listens on (bound and released at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spendstream(
    *args: str, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SPENDSTREAM_")}
    return subprocess.run([sys.executable, "-m", "spendstream.cli", *args], env={**clean, **env},
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


@pytest.fixture
def kafka_down(tmp_path: Path) -> dict[str, str]:
    """The check waits 1 s here (SPENDSTREAM_KAFKA_CHECK_S; users wait 5 s)."""
    return {"SPENDSTREAM_DATA_DIR": str(tmp_path), "SPENDSTREAM_KAFKA_CHECK_S": "1",
            "SPENDSTREAM_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{closed_port()}"}  # fmt: skip


@pytest.mark.parametrize("command", [["publish", "FILE"], ["status"], ["status", "--json"]])
def test_kafka_down_is_one_line_that_says_where_and_what_to_do(kafka_down, tmp_path, command):
    events = tmp_path / "usage.jsonl"
    events.write_text('{"event_id": "e1"}\n')
    address = kafka_down["SPENDSTREAM_KAFKA_BOOTSTRAP_SERVERS"]
    started = time.monotonic()
    result = spendstream(*[str(events) if a == "FILE" else a for a in command], env=kafka_down)
    took = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines  # no flood of librdkafka lines, no traceback
    assert address in lines[0] and "spendstream kafka start" in lines[0]
    assert "SPENDSTREAM_KAFKA_BOOTSTRAP_SERVERS" in lines[0]
    assert "within 1s" in lines[0]  # the check's wait is the setting's
    assert took < 30  # a sanity bound (it was 90 s): the check gives up after a few seconds


@pytest.fixture
def chdb_env(tmp_path: Path) -> dict[str, str]:
    """A data directory with an (empty, migrated on first use) chDB and no sink."""
    (tmp_path / "chdb").mkdir()
    return {"SPENDSTREAM_DATA_DIR": str(tmp_path)}


def test_sql_json_from_real_clickhouse_types_is_valid_json(chdb_env):
    query = (
        "SELECT [toDecimal64('1.5', 9), toDecimal64('0.000000001', 9)] AS amounts, "
        "toUUID('61f0c404-5cb3-11e7-907b-a6006ad3dba0') AS id, toIPv4('1.2.3.4') AS ip4, "
        "toIPv6('::1') AS ip6, toDate('2026-11-24') AS day, "
        "toDateTime64('2026-11-24 10:00:00.5', 3, 'UTC') AS at, nan AS n, inf AS i, "
        "-inf AS ni, toFixedString('ab', 3) AS fixed, "
        "map(toUUID('61f0c404-5cb3-11e7-907b-a6006ad3dba0'), tuple(toDecimal32('2.5', 2), 'x')) AS m"
    )

    def no_constants(name: str) -> None:
        raise AssertionError(f"invalid JSON constant {name}")

    result = spendstream("sql", query, "--format", "json", env=chdb_env)
    assert result.returncode == 0, result.stderr
    [row] = json.loads(result.stdout, parse_constant=no_constants)
    uid = "61f0c404-5cb3-11e7-907b-a6006ad3dba0"
    assert row.pop("at").startswith("2026-11-24T10:00:00.5")  # ISO text (zone as the client gives)
    assert row == {
        "amounts": ["1.500000000", "0.000000001"], "id": uid, "ip4": "1.2.3.4", "ip6": "::1",
        "day": "2026-11-24", "n": None, "i": None, "ni": None, "fixed": "ab\x00",
        "m": {uid: ["2.50", "x"]},
    }  # fmt: skip
    csv = spendstream("sql", "SELECT number + 1 AS a, ['x', 'y'][a] AS b FROM numbers(2) ORDER BY a",
                      "--format", "csv", env=chdb_env)  # fmt: skip
    assert csv.returncode == 0, csv.stderr
    assert csv.stdout == "a,b\n1,x\n2,y\n"


def test_report_for_a_budget_clickhouse_never_stored_is_an_error(chdb_env):
    result = spendstream("report", "summary", "--budget", "nope", env=chdb_env)
    assert result.returncode == 1, result.stdout
    assert "no budget 'nope'" in result.stderr
    assert "0" not in result.stdout  # no table of zeros
