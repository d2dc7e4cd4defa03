"""Is the sink's writer getting rows into ClickHouse? Shown by ``GET /health`` on the query
port and by ``spendstream status``.

A sink whose inserts fail retries for ever with consumption paused (nothing is lost, a
restart catches up), so "the process is alive" says nothing: health is the writer's own
record of its last insert attempts.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


@dataclass
class WriterHealth:
    clock: Any = time.time
    last_success: float | None = None
    failing_since: float | None = None
    failures: int = 0
    last_error: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def succeeded(self) -> None:
        with self._lock:
            self.last_success = self.clock()
            self.failing_since = None
            self.failures = 0
            self.last_error = ""

    def failed(self, error: str) -> None:
        with self._lock:
            if self.failing_since is None:
                self.failing_since = self.clock()
            self.failures += 1
            self.last_error = error[:500]

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready state; ``ok`` is false while the latest insert attempt failed."""
        with self._lock:
            state: dict[str, Any] = {
                "ok": self.failing_since is None,
                "writer": "inserting" if self.failing_since is None else "failing",
                "last_insert_at": _iso(self.last_success),
            }
            if self.failing_since is not None:
                state.update(
                    failing_since=_iso(self.failing_since),
                    failed_attempts=self.failures,
                    last_error=self.last_error,
                )
            return state


def _iso(when: float | None) -> str | None:
    return datetime.fromtimestamp(when, UTC).isoformat() if when is not None else None
