"""A watch on a consume loop: when the loop has not come round for too long, log where it
is (its thread's stack), once per stall.

Why: once in ~20 runs of the fault suite's broker-restart scenario the sink stopped
committing after the restart and logged nothing for four minutes; a loop blocked inside
a call (a synchronous commit, an insert) says nothing by itself. The watch changes
nothing in the loop: it only makes such a stall visible, with the call it is stuck in.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable

log = logging.getLogger("spendstream.watch")


class LoopWatch:
    """``beat()`` from the loop at every round; a daemon thread checks every
    ``check_s`` and logs a warning with the loop thread's stack once the last beat is more
    than ``stall_s`` old (and an info line when the loop comes round again)."""

    def __init__(
        self,
        name: str,
        stall_s: float = 120.0,
        check_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name, self.stall_s, self.check_s, self.clock = name, stall_s, check_s, clock
        self.last = clock()
        self.stalled_since: float | None = None
        self.thread_id = threading.get_ident()
        self._stop = threading.Event()

    def beat(self) -> None:
        self.last = self.clock()

    def check(self) -> str | None:
        """One look (the thread calls it; tests too): the message logged, if any."""
        now = self.clock()
        if now - self.last <= self.stall_s:
            if self.stalled_since is not None:
                self.stalled_since = None
                message = f"{self.name}: the loop came round again"
                log.info(message)
                return message
            return None
        if self.stalled_since is not None and self.stalled_since == self.last:
            return None  # already reported this stall
        self.stalled_since = self.last
        frame = sys._current_frames().get(self.thread_id)
        stack = "".join(traceback.format_stack(frame)) if frame is not None else "(gone)\n"
        message = (
            f"{self.name}: the loop has not come round for {now - self.last:.0f} s; "
            f"it is in:\n{stack}"
        )
        log.warning(message)
        return message

    def start(self) -> LoopWatch:
        """Watch the calling thread's loop from a daemon thread."""
        self.thread_id = threading.get_ident()
        self.beat()
        threading.Thread(target=self._run, name=f"{self.name}-watch", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.check_s):
            self.check()
