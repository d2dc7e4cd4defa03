"""`spendstream budgets status --watch` on the real broker: a live view that follows the
budget-status topic, on a terminal (a pty), ended by Ctrl-C with exit code 0.

As in test_budgets_cli.py, the worker's statuses are written to their topic directly."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from confluent_kafka import Producer

from spendstream.producer import publish_budgets
from spendstream.schemas.avro import codec
from spendstream.schemas.budget import load_budgets_file
from spendstream.schemas.models import BudgetStatus
from spendstream.topics import ensure_topics
from tests.conftest import ctrl_c_reaches

pytestmark = pytest.mark.integration

BUDGETS = """
budgets:
  - budget_id: acme
    name: Acme
    limit: "100"
    scope: {org: acme}
"""
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r")


def produce_status(settings, spent: str, state: str, events: int) -> None:
    now = datetime.now(UTC)
    month = now.strftime("%Y-%m")
    status = BudgetStatus(
        budget_id="acme", budget_name="Acme", period_key=month,
        period_start=now - timedelta(days=3), period_end=now + timedelta(days=20),
        spent=Decimal(spent), limit=Decimal(100), currency="USD", event_count=events,
        state=state, updated_at=now,
    )  # fmt: skip
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers})
    producer.produce(settings.topics.status, key=f"acme|{month}".encode(),
                     value=codec("BudgetStatus").encode(status.to_avro()))  # fmt: skip
    assert producer.flush(30) == 0


class Screen:
    """What the child wrote to its terminal, control sequences removed."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.text = ""

    def read(self, timeout: float) -> None:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if ready:
            try:
                self.text += ANSI.sub("", os.read(self.fd, 65536).decode(errors="replace"))
            except OSError:  # the child closed its terminal
                time.sleep(timeout)

    def wait_for(
        self, pattern: str, proc: subprocess.Popen[bytes], *, since: int = 0, seconds: float = 60
    ) -> None:
        """Until ``pattern`` appears in what was written after position ``since``."""
        start = since
        deadline = time.monotonic() + seconds
        while not re.search(pattern, self.text[start:]):
            assert proc.poll() is None, f"watch ended early ({proc.returncode}): {self.text}"
            assert time.monotonic() < deadline, f"no {pattern!r} on screen:\n{self.text}"
            self.read(0.2)


def test_watch_follows_new_statuses_and_ctrl_c_exits_cleanly(settings, tmp_path):
    ensure_topics(settings)
    (tmp_path / "b.yaml").write_text(BUDGETS)
    publish_budgets(settings, load_budgets_file(tmp_path / "b.yaml"))
    produce_status(settings, "41.123456789", "normal", 3)

    master, slave = pty.openpty()
    env = {**os.environ, **settings.to_env(), "COLUMNS": "160", "LINES": "40"}
    env.pop("FORCE_COLOR", None)
    env.pop("TTY_COMPATIBLE", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "spendstream.cli", "budgets", "status", "--watch",
         "--interval", "0.5"],
        env=env, stdin=slave, stdout=slave, stderr=subprocess.PIPE, preexec_fn=ctrl_c_reaches,
    )  # fmt: skip
    os.close(slave)
    screen = Screen(master)
    try:
        # the figures already on the topic, exact to the nano-dollar
        screen.wait_for(r"1 budget: 0 warning, 0 critical, 0 exceeded", proc)
        screen.wait_for(r"acme\s*│\s*\d{4}-\d\d\s*│\s*41\.123456789 USD\s*│\s*100\s*│\s*41\.12\s*│"
                        r"\s*normal\s*│\s*3", proc)  # fmt: skip
        # a new status record for the same budget period shows up without a restart
        mark = len(screen.text)
        produce_status(settings, "77.000000001", "warning", 8)
        screen.wait_for(r"1 budget: 1 warning, 0 critical, 0 exceeded", proc, since=mark)
        screen.wait_for(r"77\.000000001 USD\s*│\s*100\s*│\s*77\.00\s*│\s*warning\s*│\s*8", proc,
                        since=mark)  # fmt: skip

        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        assert proc.stderr is not None
        stderr = proc.stderr.read().decode()
        screen.read(0.2)
        assert "Traceback" not in stderr + screen.text, stderr
        assert "interrupted" not in stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


def test_watch_into_a_pipe_prints_a_snapshot_per_change(settings, tmp_path):
    """Not a terminal (`| tee`, a log file): no cursor tricks, one snapshot per change."""
    ensure_topics(settings)
    (tmp_path / "b.yaml").write_text(BUDGETS)
    publish_budgets(settings, load_budgets_file(tmp_path / "b.yaml"))
    produce_status(settings, "5.5", "normal", 1)
    env = {**os.environ, **settings.to_env(), "COLUMNS": "160"}
    for var in ("FORCE_COLOR", "TTY_COMPATIBLE"):
        env.pop(var, None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "spendstream.cli", "budgets", "status", "acme", "--watch",
         "--interval", "0.3"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=ctrl_c_reaches,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    screen = Screen(proc.stdout.fileno())
    try:
        screen.wait_for(r"status of acme", proc)
        screen.wait_for(r"5\.5 USD", proc)
        mark = len(screen.text)
        produce_status(settings, "99.5", "critical", 2)
        screen.wait_for(r"(?s)1 critical.*status of acme.*99\.5 USD", proc, since=mark)
        time.sleep(1)  # unchanged figures print nothing more
        screen.read(0.2)
        assert screen.text.count("status of acme") == 2
        assert "\x1b" not in screen.text
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        assert "Traceback" not in proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
