"""The worker's supervisor starts the faust worker again only for the "recovery stuck" code."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from spendstream.processes import run_restarting

CHILD = """
import sys
from pathlib import Path
runs = Path(sys.argv[1])
n = int(runs.read_text() or 0) + 1 if runs.exists() else 1
runs.write_text(str(n))
sys.exit(75 if n < 3 else int(sys.argv[2]))
"""


def test_restarts_on_the_stuck_code_and_returns_the_final_code(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    code = run_restarting([sys.executable, "-c", CHILD, str(runs), "4"], dict(os.environ),
                          75, "child")  # fmt: skip
    assert code == 4
    assert runs.read_text() == "3"


def test_other_exit_codes_end_it_at_once(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.write_text("5")  # past the stuck runs: exits with the given code straight away
    assert run_restarting([sys.executable, "-c", CHILD, str(runs), "70"], dict(os.environ),
                          75, "child") == 70  # fmt: skip
    assert runs.read_text() == "6"


SUPERVISED = """
import sys, time
from pathlib import Path
runs = Path(sys.argv[1])
n = int(runs.read_text() or 0) + 1 if runs.exists() else 1
runs.write_text(str(n))
if sys.argv[2] == "crash" and n < 3:
    sys.exit(70)       # crash-only exit: started again
if sys.argv[2] == "forever":
    time.sleep(60)     # stopped by the supervisor
sys.exit(int(sys.argv[3]))
"""


def test_supervise_restarts_a_crashed_stage_with_a_log_line(tmp_path: Path, capfd) -> None:
    from spendstream.processes import supervise

    runs = tmp_path / "runs"
    code = supervise({"price": [sys.executable, "-c", SUPERVISED, str(runs), "crash", "0"]},
                     dict(os.environ), backoff=(0.05, 0.1))  # fmt: skip
    assert code == 0 and runs.read_text() == "3"  # crashed twice, started again twice
    err = capfd.readouterr().err
    assert err.count("the price stage exited with code 70") == 2
    assert "starting it again" in err


def test_a_stage_that_ends_for_good_stops_the_others(tmp_path: Path) -> None:
    import time

    from spendstream.processes import supervise

    began = time.monotonic()
    code = supervise({
        "price": [sys.executable, "-c", SUPERVISED, str(tmp_path / "a"), "once", "1"],
        "aggregate": [sys.executable, "-c", SUPERVISED, str(tmp_path / "b"), "forever", "0"],
    }, dict(os.environ), backoff=(0.05, 0.1))  # fmt: skip
    assert code == 1  # the price stage's configuration error ends the worker
    assert time.monotonic() - began < 30  # the sleeping stage was stopped, not waited for
