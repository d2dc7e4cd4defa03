"""`spendstream alerts tail`: the budget-alerts topic live, on the real broker.

The alerts are written to their topic directly, so the command is tested on its own.
"""

from __future__ import annotations

import json
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import get_args

import pytest
from confluent_kafka import Producer
from typer.testing import CliRunner

from spendstream.cli import app
from spendstream.cli.alerts import ALERT_KINDS, alert_filter
from spendstream.cli.base import CliError
from spendstream.config import Settings
from spendstream.processes import ProcessGroup
from spendstream.readback import BadRecord, decode_alert, tail_topic
from spendstream.schemas.avro import codec
from spendstream.schemas.models import BudgetAlert
from spendstream.topics import TopicsError, ensure_topics
from tests.conftest import ctrl_c_reaches

runner = CliRunner()


def make_alert(budget_id: str, kind: str, spent: str, severity: str = "warning") -> BudgetAlert:
    return BudgetAlert(
        alert_id=f"{budget_id}:2026-05:{kind}", budget_id=budget_id, budget_name=budget_id,
        period_key="2026-05", kind=kind, severity=severity, spent=Decimal(spent),
        limit=Decimal(100), currency="USD", message=f"{budget_id}: {kind} at {spent}",
        triggered_at=datetime(2026, 5, 4, 12, 30, 15, 250000, tzinfo=UTC),
    )  # fmt: skip


ALERTS = [
    make_alert("acme", "threshold", "95.125", "critical"),
    make_alert("acme-ml", "forecast", "40"),
    make_alert("globex", "exceeded", "100.000000001", "critical"),
    make_alert("acme", "anomaly", "12.5", "info"),
]


def produce(settings: Settings, *alerts: BudgetAlert, raw: bytes | None = None) -> list[int]:
    """Write ``alerts`` (then ``raw``, a record that is no alert); their partitions in order."""
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers})
    partitions: dict[int, int] = {}

    def sent(i: int):
        return lambda error, msg: partitions.__setitem__(i, msg.partition())

    for i, a in enumerate(alerts):
        producer.produce(settings.topics.alerts, key=a.budget_id.encode(),
                         value=codec("BudgetAlert").encode(a.to_avro()),
                         on_delivery=sent(i))  # fmt: skip
    if raw is not None:
        producer.produce(settings.topics.alerts, key=b"acme", value=raw,
                         on_delivery=sent(len(alerts)))  # fmt: skip
    assert producer.flush(30) == 0
    return [partitions[i] for i in sorted(partitions)]


def tail(settings: Settings, *args: str):
    return runner.invoke(app, ["alerts", "tail", *args], env=settings.to_env())


# --- unit: the filter, no broker ------------------------------------------------------------
def test_alert_filter_globs_kinds_and_rejects_unknown_kinds():
    assert set(ALERT_KINDS) == set(get_args(BudgetAlert.model_fields["kind"].annotation))
    pick = alert_filter("acme*", ["threshold", "forecast"])
    assert [a.alert_id for a in ALERTS if pick(a)] == [
        "acme:2026-05:threshold", "acme-ml:2026-05:forecast"]  # fmt: skip
    assert [a.budget_id for a in ALERTS if alert_filter("acme", None)(a)] == ["acme", "acme"]
    assert [a.budget_id for a in ALERTS if alert_filter("glob?x", [])(a)] == ["globex"]
    assert all(alert_filter(None, None)(a) for a in ALERTS)
    with pytest.raises(CliError, match=re.escape("unknown --kind bogus: use threshold|")):
        alert_filter(None, ["threshold", "bogus"])


# --- integration ----------------------------------------------------------------------------
@pytest.mark.integration
def test_tail_prints_every_alert_filters_and_json(settings):
    ensure_topics(settings)
    partitions = produce(settings, *ALERTS, raw=b"\x00not avro")

    result = tail(settings)
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == len(ALERTS)
    assert sorted(line.split()[4] for line in lines) == ["acme", "acme", "acme-ml", "globex"]
    line = next(line for line in lines if "threshold" in line)
    assert line.startswith("2026-05-04 12:30:15Z critical threshold acme 95.125/100 USD (95.12%)")
    assert line.endswith("acme: threshold at 95.125")
    assert "does not decode" in result.stderr  # the bad record: a warning, not a crash

    only = tail(settings, "--budget", "acme*", "--kind", "threshold", "--kind", "forecast")
    assert only.exit_code == 0, only.output
    assert sorted(line.split()[3] for line in only.stdout.splitlines()) == [
        "forecast", "threshold"]  # fmt: skip
    exact = tail(settings, "--budget", "acme")
    assert sorted(line.split()[3] for line in exact.stdout.splitlines()) == [
        "anomaly", "threshold"]  # fmt: skip

    as_json = tail(settings, "--json", "--budget", "globex")
    assert as_json.exit_code == 0, as_json.output
    (record,) = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert record["spent"] == "100.000000001" and record["limit"] == "100"
    assert record["kind"] == "exceeded" and record["alert_id"] == "globex:2026-05:exceeded"

    # --last 1: the newest record of each partition (the raw one, last of all, is a warning)
    newest = {p: i for i, p in enumerate(partitions)}
    expected = sorted(ALERTS[i].alert_id for i in newest.values() if i < len(ALERTS))
    last = tail(settings, "--last", "1", "--json")
    assert last.exit_code == 0, last.output
    assert sorted(json.loads(line)["alert_id"] for line in last.stdout.splitlines()) == expected
    assert last.stderr.count("does not decode") == 1
    assert tail(settings, "--last", "0").stdout.strip() == ""


@pytest.mark.integration
def test_tail_errors_are_one_line(settings):
    bad = tail(settings, "--kind", "exceded")
    assert bad.exit_code == 1
    assert bad.stderr.strip().splitlines() == [
        "error: unknown --kind exceded: use threshold|exceeded|forecast|anomaly"]  # fmt: skip
    missing = tail(settings)  # no topics created
    assert missing.exit_code == 1 and "Traceback" not in missing.output
    assert len(missing.stderr.strip().splitlines()) == 1
    assert "does not exist" in missing.stderr and "spendstream worker" in missing.stderr


@pytest.mark.integration
def test_tail_topic_stop_and_bad_records(settings):
    with pytest.raises(TopicsError, match="does not exist"):
        next(tail_topic(settings, settings.topics.alerts, decode_alert, follow=False, last=None))
    ensure_topics(settings)
    produce(settings, ALERTS[0], raw=b"junk")
    got = list(tail_topic(settings, settings.topics.alerts, decode_alert,
                          follow=False, last=None))  # fmt: skip
    assert ALERTS[0] in got and sum(isinstance(r, BadRecord) for r in got) == 1
    started = time.monotonic()
    followed = list(tail_topic(settings, settings.topics.alerts, decode_alert, follow=True,
                               last=None, stop=lambda: time.monotonic() - started > 3,
                               poll_s=0.2))  # fmt: skip
    assert followed == got


@pytest.mark.integration
def test_follow_prints_new_alerts_and_ctrl_c_exits_cleanly(settings):
    ensure_topics(settings)
    produce(settings, ALERTS[0])
    proc = subprocess.Popen(
        [sys.executable, "-m", "spendstream.cli", "alerts", "tail", "--follow"],
        env=ProcessGroup(settings).env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, preexec_fn=ctrl_c_reaches,
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()

    def next_line(timeout: float = 60) -> str:
        try:
            return lines.get(timeout=timeout)
        except queue.Empty:
            proc.kill()
            pytest.fail(f"no output from alerts tail --follow; stderr: {proc.communicate()[1]}")

    try:
        assert "acme: threshold at 95.125" in next_line()  # caught up with the old alert
        time.sleep(1)  # still running: a follow does not end at the end of the topic
        assert proc.poll() is None
        produce(settings, ALERTS[2])
        assert "globex: exceeded at 100.000000001" in next_line()
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
