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
