"""Run spendstream services (worker, sink) as child processes: the demo and tests use it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from spendstream.config import Settings
from spendstream.errors import SpendstreamError

T = TypeVar("T")


class ServiceFailed(SpendstreamError, RuntimeError):
    pass


class ProcessGroup:
    """Named child processes running ``spendstream <command>`` with the given settings."""

    def __init__(self, settings: Settings, logs_dir: Path | None = None, **env: str) -> None:
        self.settings = settings
        self.logs_dir = logs_dir or settings.data_dir / "logs"
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, **settings.to_env(), **env}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def log_path(self, name: str) -> Path:
        return self.logs_dir / f"{name}.log"

    def start(self, name: str, *args: str, **env: str) -> subprocess.Popen[bytes]:
        with self.log_path(name).open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "spendstream.cli", *args],
                env={**self.env, **env},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs[name] = proc
        return proc

    def tail(self, name: str, lines: int = 15) -> str:
        try:
            text = self.log_path(name).read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n  ".join(text[-lines:])

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise ServiceFailed(
                    f"the {name} exited with code {proc.returncode}; last lines of "
                    f"{self.log_path(name)}:\n  {self.tail(name)}"
                )

    def kill(self, name: str) -> None:
        """SIGKILL, as a crash would."""
        proc = self.procs.pop(name)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def stop(self, name: str | None = None, timeout: float = 30) -> None:
        names = [name] if name else list(self.procs)
        for n in names:
            proc = self.procs[n]
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for n in names:
            proc = self.procs.pop(n)
            try:
                proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def wait_for(
    what: str,
    check: Callable[[], T | None],
    timeout: float,
    group: ProcessGroup | None = None,
    interval: float = 0.3,
) -> T:
    """Poll ``check`` until it returns something truthy; fail clearly on timeout or crash."""
    deadline = time.monotonic() + timeout
    while True:
        if group is not None:
            group.check_alive()
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            where = f"; logs in {group.logs_dir}" if group else ""
            raise ServiceFailed(f"timed out after {timeout:.0f}s waiting for {what}{where}")
        time.sleep(interval)


def worker_metrics(port: int) -> dict[str, int] | None:
    """A worker's counters (``/metrics.json``), or None while it does not answer."""
    import json
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics.json", timeout=5) as resp:
            data: dict[str, int] = json.loads(resp.read())
            return data
    except OSError:
        return None


#: exit code of a faust worker whose table recovery made no headway (streams/app.py);
#: ``spendstream worker`` starts it again
RECOVERY_STUCK = 75


#: exit codes after which a supervised child is not started again: a clean stop, and a
#: CLI error (bad settings, Kafka unreachable at start): starting again would only repeat it
FINAL_CODES = (0, 1)


def supervise(
    children: dict[str, list[str]],
    env: dict[str, str],
    *,
    backoff: tuple[float, float] = (1.0, 30.0),
    settle_s: float = 60.0,
) -> int:
    """Run each named child and start it again when it crashes (crash-only: any exit but
    ``FINAL_CODES``, kills included), with a doubling back-off that resets once a child
    has run ``settle_s``; forward SIGTERM/SIGINT to all. Ends when every child has ended
    for good; returns the worst exit code.

    ``spendstream worker`` runs the price stage and the faust aggregator this way: a
    crashed stage comes back on its own, and its uncommitted input is replayed."""
    procs: dict[str, subprocess.Popen[bytes]] = {}
    delays = dict.fromkeys(children, backoff[0])
    started: dict[str, float] = {}
    due: dict[str, float] = dict.fromkeys(children, 0.0)
    codes: dict[str, int] = {}
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while True:
            now = time.monotonic()
            for name, argv in children.items():
                if name in codes or name in procs or stopping or now < due[name]:
                    continue
                procs[name] = subprocess.Popen(argv, env=env)
                started[name] = now
            for name, proc in list(procs.items()):
                code = proc.poll()
                if code is None:
                    continue
                del procs[name]
                if stopping or code in FINAL_CODES:
                    codes[name] = code
                    if not stopping:  # one stage ended for good: so does the worker
                        print(f"the {name} stage ended with code {code}; stopping the "
                              "others", file=sys.stderr, flush=True)  # fmt: skip
                        forward(signal.SIGTERM, None)
                    continue
                ran = time.monotonic() - started[name]
                delay = backoff[0] if ran >= settle_s else delays[name]
                delays[name] = min(delay * 2, backoff[1])
                due[name] = time.monotonic() + delay
                print(f"the {name} stage exited with code {code} after {ran:.0f}s; starting "
                      f"it again in {delay:.0f}s", file=sys.stderr, flush=True)  # fmt: skip
            if not procs and (stopping or len(codes) == len(children)):
                bad = [c for c in codes.values() if c]
                return bad[0] if bad else 0
            time.sleep(0.2)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def run_restarting(argv: list[str], env: dict[str, str], restart_on: int, what: str) -> int:
    """Run ``argv`` as a child in the foreground; start it again whenever it exits with
    ``restart_on``; forward SIGTERM/SIGINT to it. Returns the child's final exit code."""
    child: subprocess.Popen[bytes] | None = None
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while True:
            child = subprocess.Popen(argv, env=env)
            code = child.wait()
            if code != restart_on or stopping:
                return code
            print(f"{what} exited with {code}; starting it again", file=sys.stderr, flush=True)
            time.sleep(1)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
