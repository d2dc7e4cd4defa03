"""Writes one partition's batch into ClickHouse: the native or the decoded path, retries with
backoff while ClickHouse is away, bisection of a batch ClickHouse refuses as data.

Guarantees, stated on the contract (``ClickHouseWriter.write``):
  * every insert carries the batch's deduplication token, so writing the same batch again
    (a retry, or a replay after a crash before the commit) adds nothing;
  * it returns only when every row is stored, except the records it returns as refused for
    good (ClickHouse refused their rows alone, while the rest of the batch went in);
  * while ClickHouse is unreachable (or refuses every row alike: the table is at fault,
    not the data) it retries for ever, calling ``wait`` between attempts; the consume loop
    pauses its partitions there and may stop the sink by raising from it.

It knows nothing of Kafka: a test drives it with a fake client (``InsertClient``).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .health import WriterHealth
from .native_ingest import INSERT_SETTINGS, NativeBatch
from .tables import SinkRecord, SinkTable

log = logging.getLogger("spendstream.sink")


class InsertClient(Protocol):
    """The part of a clickhouse-connect client the sink uses."""

    def insert(self, table: str, data: Sequence[Sequence[Any]], column_names: Sequence[str],
               settings: dict[str, Any] | None = None) -> Any: ...  # fmt: skip

    def raw_insert(self, table: str, *, insert_block: bytes, fmt: str,
                   settings: dict[str, Any] | None = None) -> Any: ...  # fmt: skip

    def query(self, query: str, parameters: dict[str, Any] | None = None) -> Any: ...


@dataclass
class WriterStats:
    insert_failures: int = 0
    #: waits before another insert attempt, after one failed
    retries: int = 0
    #: native batches ClickHouse refused as data, written by decoding row by row instead
    native_fallbacks: int = 0


@dataclass
class WriteBatch:
    """One partition's buffered records, ready to write."""

    table: SinkTable
    #: every buffered record (the DLQ and the decoding fallback read them by index)
    records: list[SinkRecord] = field(default_factory=list)
    #: decoded rows, and the index in ``records`` each came from
    rows: list[list[Any]] = field(default_factory=list)
    row_record: list[int] = field(default_factory=list)
    #: records ClickHouse decodes itself (None: none in this batch)
    native: NativeBatch | None = None


def sleep_wait(delay: float, table: str, exc: Exception) -> None:
    time.sleep(delay)


class ClickHouseWriter:
    def __init__(
        self,
        client: InsertClient,
        *,
        lock: threading.Lock | None = None,
        health: WriterHealth | None = None,
        stats: WriterStats | None = None,
        retry_initial_s: float = 0.5,
        retry_max_s: float = 30.0,
        wait: Callable[[float, str, Exception], None] = sleep_wait,
        recovered: Callable[[], None] = lambda: None,
    ) -> None:
        self.client = client
        self.lock = lock or threading.Lock()
        self.health = health or WriterHealth()
        self.stats = stats or WriterStats()
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        #: called with (delay, table, error) before another attempt; may raise to give up
        self.wait = wait
        #: called when a write ends, after waits or not (the loop resumes paused partitions)
        self.recovered = recovered

    # --- watermarks ----------------------------------------------------------------------
    def stored_offset(self, table: str, topic: str, partition: int) -> int:
        """Highest source offset of ``topic:partition`` stored in ``table`` (-1: none)."""
        with self.lock:
            result = self.client.query(
                f"SELECT max(_offset), count() FROM {table} "
                "WHERE _topic = {t:String} AND _partition = {p:Int32}",
                parameters={"t": topic, "p": partition},
            )
        max_offset, count = result.result_rows[0]
        return int(max_offset) if count else -1

    def origin_marks(self, table: str, topic: str, partition: int) -> dict[tuple[str, int], int]:
        """(input topic, input partition) -> highest input offset stored (migration 0005)."""
        with self.lock:
            rows = self.client.query(
                "SELECT origin_topic, origin_partition, max(max_offset) "
                "FROM origin_watermarks WHERE table_name = {n:String} AND "
                "_topic = {t:String} AND _partition = {p:Int32} "
                "GROUP BY origin_topic, origin_partition",
                parameters={"n": table, "t": topic, "p": partition},
            ).result_rows
        return {(t, int(p)): int(o) for t, p, o in rows}

    # --- writing ---------------------------------------------------------------------------
    def write(self, batch: WriteBatch, token: str) -> list[tuple[int, str]]:
        """Store ``batch``; (record index, reason) of the records refused for good."""
        rejected: list[tuple[int, str]] = []
        native_token = token
        if batch.native is not None and not batch.native.empty:
            if batch.rows:
                native_token = f"{token}.n"
            rejected += self._insert_native(batch, native_token)
        if batch.rows:
            failed = self.insert_with_retry(batch.table.name, batch.rows,
                                            list(batch.table.columns), token)  # fmt: skip
            rejected += records_of(failed, batch.row_record)
        return rejected

    def insert(self, table: str, rows: list[list[Any]], columns: list[str], token: str) -> None:
        """One insert attempt, deduplicated by ``token``."""
        try:
            with self.lock:
                self.client.insert(
                    table, rows, column_names=columns,
                    settings={
                        "insert_deduplication_token": token,
                        "deduplicate_blocks_in_dependent_materialized_views": 1,
                    },
                )  # fmt: skip
        except Exception as exc:
            self.health.failed(f"insert into {table}: {first_line(exc)}")
            raise
        self.health.succeeded()

    def _insert_native(self, batch: WriteBatch, token: str) -> list[tuple[int, str]]:
        """Send the batch as Avro containers / JSON lines (one per writer schema or batch
        format) to the staging tables.

        Unreachable ClickHouse: wait and retry, as for decoded rows. Refused as data (a
        record whose framing is ours but whose body is not valid Avro, say): the groups
        not yet written are decoded row by row, which finds the records at fault.
        """
        assert batch.native is not None
        payloads = batch.native.payloads()
        done = 0
        delay = self.retry_initial_s
        try:
            while done < len(payloads):
                key, staging, fmt, data = payloads[done]
                part = token if len(payloads) == 1 else f"{token}.w{done}"
                settings = {
                    "insert_deduplication_token": part,
                    "deduplicate_blocks_in_dependent_materialized_views": 1,
                    **INSERT_SETTINGS,
                }
                try:
                    with self.lock:
                        self.client.raw_insert(staging, insert_block=data, fmt=fmt,
                                               settings=settings)  # fmt: skip
                    self.health.succeeded()
                    done += 1
                    delay = self.retry_initial_s
                except Exception as exc:
                    self.stats.insert_failures += 1
                    self.health.failed(first_line(exc))
                    if not is_data_error(exc):
                        delay = self._backoff(staging, exc, delay)
                        continue
                    self.stats.native_fallbacks += 1
                    log.warning("ClickHouse refused a native %s batch for %s (%s); decoding "
                                "it row by row", fmt, batch.table.name, first_line(exc))  # fmt: skip
                    left = [i for k, *_ in payloads[done:] for i in batch.native.indices[k]]
                    return self._insert_decoded(batch, left, f"{token}.rows")
            return []
        finally:
            self.recovered()

    def _insert_decoded(
        self, batch: WriteBatch, indices: list[int], token: str
    ) -> list[tuple[int, str]]:
        """Decode the records at ``indices`` in Python and insert them as rows."""
        assert batch.table.builder is not None
        rows: list[list[Any]] = []
        row_record: list[int] = []
        rejected: list[tuple[int, str]] = []
        for index in indices:
            record = batch.records[index]
            try:
                built = batch.table.builder(record)
            except Exception as exc:
                rejected.append((index, f"sink could not decode {record.topic} record: {exc}"))
                continue
            rows.extend(built)
            row_record.extend([index] * len(built))
        if rows:
            failed = self.insert_with_retry(batch.table.name, rows, list(batch.table.columns),
                                            token)  # fmt: skip
            rejected += records_of(failed, row_record)
        return rejected

    def insert_with_retry(
        self, table: str, rows: list[list[Any]], columns: list[str], token: str
    ) -> list[tuple[int, str]]:
        """Insert a batch; returns (row index, reason) of rows ClickHouse refuses for good.

        Unreachable ClickHouse (or a transient server condition): wait and retry with
        backoff, forever. The same data error three times: split the batch to find the
        rows at fault; they are returned only if the rest of the batch inserts (if every
        row fails alike, the table is at fault, not the data: keep retrying).
        """
        delay = self.retry_initial_s
        data_errors = 0
        try:
            while True:
                try:
                    self.insert(table, rows, columns, token)
                    return []
                except Exception as exc:
                    self.stats.insert_failures += 1
                    if is_data_error(exc):
                        data_errors += 1
                        if data_errors >= 3 and len(rows) > 1:
                            failed = self._insert_parts(table, rows, list(range(len(rows))),
                                                        columns, token)  # fmt: skip
                            if len(failed) < len(rows):
                                return failed
                    delay = self._backoff(table, exc, delay)
        finally:
            self.recovered()

    def _insert_parts(
        self, table: str, rows: list[list[Any]], idx: list[int], columns: list[str], token: str
    ) -> list[tuple[int, str]]:
        """Bisect: halves that insert are stored (each under a token of its own); a single
        row refused as data is the one at fault."""
        delay = self.retry_initial_s
        while True:
            try:
                self.insert(table, [rows[i] for i in idx], columns, token)
                return []
            except Exception as exc:
                if is_data_error(exc):
                    reason = first_line(exc)
                    break
                delay = self._backoff(table, exc, delay)
        if len(idx) == 1:
            return [(idx[0], f"ClickHouse refused the row: {reason}")]
        mid = len(idx) // 2
        return self._insert_parts(table, rows, idx[:mid], columns, f"{token}.0") + \
            self._insert_parts(table, rows, idx[mid:], columns, f"{token}.1")  # fmt: skip

    def _backoff(self, table: str, exc: Exception, delay: float) -> float:
        """Wait ``delay`` (through ``wait``, which may raise to stop); the next delay."""
        log.warning("insert into %s failed (%s); retrying in %.1fs", table, first_line(exc),
                    delay)  # fmt: skip
        self.stats.retries += 1
        self.wait(delay, table, exc)
        return min(delay * 2, self.retry_max_s)


def records_of(failed: list[tuple[int, str]], row_record: list[int]) -> list[tuple[int, str]]:
    """Rows refused for good -> their records (once each: a record goes to the DLQ whole)."""
    seen: dict[int, str] = {}
    for row, reason in failed:
        seen.setdefault(row_record[row], reason)
    return list(seen.items())


#: ClickHouse error codes that are conditions of the server, not of the data.
TRANSIENT_CODES = {159, 202, 209, 210, 236, 241, 242, 252, 425, 999, 1000}


def first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def is_data_error(exc: Exception) -> bool:
    """True when the data is at fault (ClickHouse refused it, or it cannot be serialized),
    False when ClickHouse is unreachable or overloaded."""
    from clickhouse_connect.driver.exceptions import DataError, ProgrammingError

    if isinstance(exc, (DataError, ProgrammingError, TypeError, ValueError, OverflowError)):
        return True
    text = str(exc)
    match = re.search(r"Code: (\d+)", text)
    if match is None or "DB::Exception" not in text:
        return False
    return int(match.group(1)) not in TRANSIENT_CODES
