"""ClickHouseWriter with a fake client (no ClickHouse): retries with backoff through an
outage, bisection of a batch with a bad row, a native batch refused as data decoded instead,
every row failing alike treated as an outage."""

from __future__ import annotations

from typing import Any

import pytest

from spendstream.schemas import batches
from spendstream.sinks.native_ingest import NativeBatch, json_position, position_prefix
from spendstream.sinks.tables import NativePath, SinkRecord, SinkTable
from spendstream.sinks.writer import ClickHouseWriter, WriteBatch

BAD = "DB::Exception: Code: 27. Cannot parse input"


class FakeClient:
    """Records inserts; refuses rows whose first value is "bad" (as data), fails every
    insert while ``down`` > 0 (as an unreachable server), refuses raw inserts as data when
    ``refuse_raw``."""

    def __init__(self, down: int = 0, refuse_raw: bool = False, refuse_all: int = 0) -> None:
        self.down, self.refuse_raw, self.refuse_all = down, refuse_raw, refuse_all
        self.inserted: list[tuple[str, list[list[Any]], str]] = []
        self.raw: list[tuple[str, bytes, str]] = []

    def insert(self, table, data, column_names, settings=None):  # type: ignore[no-untyped-def]
        if self.down:
            self.down -= 1
            raise ConnectionError("connection refused")
        if self.refuse_all:
            self.refuse_all -= 1
            raise RuntimeError(BAD)
        if any(row[0] == "bad" for row in data):
            raise RuntimeError(BAD)
        self.inserted.append((table, list(data), settings["insert_deduplication_token"]))

    def raw_insert(self, table, *, insert_block, fmt, settings=None):  # type: ignore[no-untyped-def]
        if self.down:
            self.down -= 1
            raise ConnectionError("connection refused")
        if self.refuse_raw:
            raise RuntimeError(BAD)
        self.raw.append((table, insert_block, settings["insert_deduplication_token"]))

    def query(self, query, parameters=None):  # type: ignore[no-untyped-def]
        raise AssertionError("not used here")


TABLE = SinkTable("t", lambda t: "t", ["a", "_offset"],
                  lambda r: [[r.value.decode(), r.offset]],  # type: ignore[union-attr]
                  NativePath(batch_staging={batches.ALLOCATIONS_V1: "t_rows_json"}))  # fmt: skip


def writer(client: FakeClient, waits: list[float]) -> ClickHouseWriter:
    return ClickHouseWriter(client, retry_initial_s=1.0, retry_max_s=4.0,  # type: ignore[arg-type]
                            wait=lambda delay, table, exc: waits.append(delay))  # fmt: skip


def decoded(values: list[str]) -> WriteBatch:
    batch = WriteBatch(TABLE)
    for i, v in enumerate(values):
        batch.records.append(SinkRecord("t", 0, i, None, v.encode()))
        batch.rows.append([v, i])
        batch.row_record.append(i)
    return batch


def test_an_outage_is_retried_with_doubling_capped_backoff_under_one_token() -> None:
    client, waits = FakeClient(down=4), []
    assert writer(client, waits).write(decoded(["a", "b"]), "t:0:0-1") == []
    assert waits == [1.0, 2.0, 4.0, 4.0]
    assert client.inserted == [("t", [["a", 0], ["b", 1]], "t:0:0-1")]


def test_a_bad_row_is_bisected_out_and_the_rest_stored() -> None:
    client, waits = FakeClient(), []
    w = writer(client, waits)
    rejected = w.write(decoded(["a", "b", "bad", "c"]), "tok")
    assert [i for i, _ in rejected] == [2] and "Cannot parse input" in rejected[0][1]
    assert sorted(r[0] for _, rows, _ in client.inserted for r in rows) == ["a", "b", "c"]
    # each stored half under a token of its own (a replay of the batch dedupes the same way)
    assert len({tok for *_, tok in client.inserted}) == len(client.inserted)
    assert w.stats.insert_failures >= 3


def test_every_row_refused_alike_is_an_outage_not_poison() -> None:
    client, waits = FakeClient(refuse_all=8), []
    assert writer(client, waits).write(decoded(["a", "b"]), "tok") == []
    # the table refused everything alike: nothing is dead-lettered, it waits and stores all
    assert len(waits) >= 3
    assert sorted(r[0] for _, rows, _ in client.inserted for r in rows) == ["a", "b"]


def native_batch(values: list[str]) -> WriteBatch:
    batch = WriteBatch(TABLE)
    nb = NativeBatch(None, position_prefix("t", 0), json_position("t", 0),
                     {batches.ALLOCATIONS_V1: "t_rows_json"})  # fmt: skip
    for i, v in enumerate(values):
        batch.records.append(SinkRecord("t", 0, i, None, v.encode()))
        nb.add_rows(batches.ALLOCATIONS_V1, b"[]", i, i)
    batch.native = nb
    return batch


def test_a_native_batch_goes_to_its_staging_table_and_a_refused_one_is_decoded() -> None:
    client, waits = FakeClient(down=1), []
    w = writer(client, waits)
    assert w.write(native_batch(["a", "b"]), "tok") == []
    assert [(t, tok) for t, _, tok in client.raw] == [("t_rows_json", "tok")]
    assert client.raw[0][1] == b'["t",0,0,[]]\n["t",0,1,[]]\n' and waits == [1.0]

    refusing = FakeClient(refuse_raw=True)
    w = writer(refusing, [])
    rejected = w.write(native_batch(["a", "bad"]), "tok")
    assert rejected == [(1, "ClickHouse refused the row: " + BAD)]
    assert w.stats.native_fallbacks == 1
    assert [rows for _, rows, _ in refusing.inserted] == [[["a", 0]]]


def test_a_stop_during_an_outage_leaves_without_writing() -> None:
    class Stop(Exception):
        pass

    def wait(delay: float, table: str, exc: Exception) -> None:
        raise Stop

    client = FakeClient(down=10)
    w = ClickHouseWriter(client, wait=wait)  # type: ignore[arg-type]
    with pytest.raises(Stop):
        w.write(decoded(["a"]), "tok")
    assert client.inserted == []
