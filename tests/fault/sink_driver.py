"""The real sink service with a failure injected into its ClickHouse writer.

    python tests/fault/sink_driver.py --down-file PATH    inserts fail while PATH exists
    python tests/fault/sink_driver.py --crash-after-insert SIGKILL at the first offset
                                                          commit after an insert
    ... --retry-max-s S                                   cap the writer's backoff at S
                                                          (the service's is 30 s)

Settings come from SPENDSTREAM_* variables like any service. The loopback query port
works as usual (it uses the unwrapped client).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from spendstream.config import load_settings  # noqa: E402
from spendstream.sinks import clickhouse_sink  # noqa: E402
from spendstream.sinks.service import run_sink  # noqa: E402


class Unreachable:
    """The real client, except that writes fail (as a lost connection) while a file exists."""

    def __init__(self, client: Any, down_file: Path) -> None:
        self._client, self._down = client, down_file

    def _check(self) -> None:
        if self._down.exists():
            raise ConnectionError("ClickHouse unreachable (fault injection)")

    def insert(self, *args: Any, **kwargs: Any) -> Any:
        self._check()
        return self._client.insert(*args, **kwargs)

    def raw_insert(self, *args: Any, **kwargs: Any) -> Any:
        self._check()
        return self._client.raw_insert(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def crash_at_first_commit() -> None:
    original = clickhouse_sink.ClickHouseSink._commit

    def commit(self: Any, tp: Any, next_offset: int) -> None:
        if self.stats.batches:  # a batch reached ClickHouse; its offsets never will
            os.kill(os.getpid(), signal.SIGKILL)
        original(self, tp, next_offset)

    clickhouse_sink.ClickHouseSink._commit = commit  # type: ignore[method-assign]


def cap_backoff(retry_max_s: float) -> None:
    """The service builds its sink with the default backoff (0.5 s doubling to 30 s); a
    short outage needs a lower cap to span several retries and to be noticed soon after
    it ends."""
    original = clickhouse_sink.ClickHouseSink.from_settings.__func__  # type: ignore[attr-defined]

    def from_settings(cls: Any, settings: Any, client: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("retry_max_s", retry_max_s)
        return original(cls, settings, client, **kwargs)

    clickhouse_sink.ClickHouseSink.from_settings = classmethod(from_settings)  # type: ignore[method-assign,assignment]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--down-file", type=Path)
    parser.add_argument("--crash-after-insert", action="store_true")
    parser.add_argument("--retry-max-s", type=float)
    args = parser.parse_args()
    if args.crash_after_insert:
        crash_at_first_commit()
    if args.retry_max_s is not None:
        cap_backoff(args.retry_max_s)
    wrap = (lambda c: Unreachable(c, args.down_file)) if args.down_file else None
    run_sink(load_settings(), wrap_client=wrap)


if __name__ == "__main__":
    main()
