"""Columnar batch records: the rows of a batch as ClickHouse Native columns.

A JSON batch record (schemas/batches.py) costs ClickHouse a text parse and a view per row:
on this 2-core machine about 2.2 s for 100,000 priced rows and their 200,000 allocations,
where the same rows as Native columns go in in about 0.6 s (docs/design.md). So the price
stage writes its two internal topics in this form:

    {"v":"priced/3","n":<rows>,"len":[<bytes of each stream>, ...]}\\n<streams>

The head is one line of JSON (the format, the row count and the byte length of each
stream); the body is the streams, back to back. Each column is one or more streams in
ClickHouse's Native encoding of its type (integers little-endian, strings length-prefixed,
arrays and maps as an offsets stream followed by their element streams), so a reader that
knows the lengths can take a column out, or join the same column of many records into one
Native block, without parsing a value (sinks/native_ingest.py does that; the offsets of
arrays and maps are per record and are shifted when records are joined).

Values are the same as in the JSON formats, column for column: money in integer nano-units
(Int128: also the raw value of ClickHouse's Decimal(38, 9)), times in integer microseconds
(Int64: the raw value of DateTime64(6)); ``decode`` gives back the rows ``encode`` was given.
The encoding of strings is clickhouse-connect's own (its Native serializer), so these bytes
are what ClickHouse itself reads and writes.
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import accumulate, chain
from typing import Any

from clickhouse_connect.datatypes.registry import get_from_name
from clickhouse_connect.driver.ctypes import RespBuffCls
from clickhouse_connect.driver.insert import InsertContext
from clickhouse_connect.driver.query import QueryContext

from spendstream.errors import SpendstreamError


class ColumnarFormatError(SpendstreamError, ValueError):
    """A columnar batch record that does not read as its format says; the message says why."""


_STRING = get_from_name("String")
_INSERT = InsertContext("", [], [])
_QUERY = QueryContext()


def _str_write(values: Sequence[str]) -> bytes:
    out = bytearray()
    _STRING.write_column_data(values, out, _INSERT)
    return bytes(out)


class _Bytes:
    """The byte source clickhouse-connect's readers take."""

    def __init__(self, data: bytes) -> None:
        self.gen = iter((data,))

    def close(self) -> None:
        pass


def _str_read(data: bytes, n: int) -> list[str]:
    if n == 0:
        return []
    return list(_STRING.read_column_data(RespBuffCls(_Bytes(data)), n, _QUERY, None))


def _i128_write(values: Sequence[int]) -> bytes:
    if values and min(values) >= 0 and max(values) < 1 << 63:
        # the usual case, written at C speed: each value's low 8 bytes, high 8 bytes zero
        out = array("q", bytes(16 * len(values)))
        out[0::2] = array("q", values)
        return out.tobytes()
    return b"".join([v.to_bytes(16, "little", signed=True) for v in values])


def _i128_read(data: bytes) -> list[int]:
    halves = array("q")
    halves.frombytes(data[: len(data) - len(data) % 16])
    low = halves[0::2]
    if not any(halves[1::2]) and (not low or min(low) >= 0):
        return low.tolist()
    return [
        int.from_bytes(data[i : i + 16], "little", signed=True) for i in range(0, len(data), 16)
    ]


def _offsets(lengths: Sequence[int]) -> bytes:
    return array("Q", accumulate(lengths)).tobytes()


def _split(flat: list[Any], ends: Sequence[int]) -> list[list[Any]]:
    out, start = [], 0
    for end in ends:
        out.append(flat[start:end])
        start = end
    return out


@dataclass(frozen=True)
class Kind:
    """How one column's values become streams and back. ``offsets``: the first stream is
    an array's offsets (shifted when records are joined)."""

    name: str
    #: the ClickHouse type these streams are the Native encoding of
    native_type: str
    streams: int
    write: Callable[[Sequence[Any]], list[bytes]]
    read: Callable[[list[bytes], int], list[Any]]
    offsets: bool = False


def _fixed(name: str, code: str, native_type: str) -> Kind:
    def write(values: Sequence[Any]) -> list[bytes]:
        return [array(code, values).tobytes()]

    def read(streams: list[bytes], n: int) -> list[Any]:
        column = array(code)
        column.frombytes(streams[0])
        return column.tolist()

    return Kind(name, native_type, 1, write, read)


def _map_write(values: Sequence[dict[str, str]]) -> list[bytes]:
    return [
        _offsets([len(v) for v in values]),
        _str_write([k for v in values for k in v]),
        _str_write([x for v in values for x in v.values()]),
    ]


def _map_read(streams: list[bytes], n: int) -> list[dict[str, str]]:
    ends = array("Q")
    ends.frombytes(streams[0])
    total = ends[-1] if n else 0
    if total == 0:  # no row has tags: the usual case
        return [{} for _ in range(n)]
    keys = _split(_str_read(streams[1], total), ends)
    values = _split(_str_read(streams[2], total), ends)
    return [dict(zip(k, v, strict=True)) for k, v in zip(keys, values, strict=True)]


def _lines_write(values: Sequence[Sequence[Sequence[Any]]]) -> list[bytes]:
    lines = list(chain.from_iterable(values))
    return [
        _offsets([len(v) for v in values]),
        _str_write([line[0] for line in lines]),
        _i128_write([line[1] for line in lines]),
        _str_write([line[2] for line in lines]),
        _i128_write([line[3] for line in lines]),
    ]


def _lines_read(streams: list[bytes], n: int) -> list[list[list[Any]]]:
    ends = array("Q")
    ends.frombytes(streams[0])
    total = ends[-1] if n else 0
    names, units = _str_read(streams[1], total), _str_read(streams[3], total)
    quantities, amounts = _i128_read(streams[2]), _i128_read(streams[4])
    flat = [list(line) for line in zip(names, quantities, units, amounts, strict=True)]
    return _split(flat, ends)


def _wide(name: str, native_type: str) -> Kind:
    """128-bit integers (money in nano-units)."""
    return Kind(name, native_type, 1, lambda v: [_i128_write(v)], lambda s, n: _i128_read(s[0]))


#: column kinds by name
KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind("str", "String", 1, lambda v: [_str_write(v)], lambda s, n: _str_read(s[0], n)),
        _fixed("u8", "B", "UInt8"),
        _fixed("i32", "i", "Int32"),
        _fixed("i64", "q", "Int64"),
        _fixed("u64", "Q", "UInt64"),
        _wide("i128", "Int128"),
        # microseconds since the epoch: the raw value of DateTime64(6, 'UTC')
        _fixed("micros", "q", "DateTime64(6, 'UTC')"),
        # nano-units: the raw value of Decimal(38, 9)
        _wide("nanos", "Decimal(38, 9)"),
        Kind("str_map", "Map(String, String)", 3, _map_write, _map_read, offsets=True),
        # cost lines [name, quantity in nano-units, unit, amount in nano-units]
        Kind(
            "cost_lines",
            "Array(Tuple(name String, quantity Decimal(38, 9), unit String, "
            "amount Decimal(38, 9)))",
            5,
            _lines_write,
            _lines_read,
            offsets=True,
        ),  # fmt: skip
    )
}


@dataclass(frozen=True)
class ColumnarFormat:
    version: str
    #: (column name, kind name), in row order
    columns: tuple[tuple[str, str], ...]

    @property
    def kinds(self) -> list[Kind]:
        return [KINDS[k] for _, k in self.columns]

    @property
    def prefix(self) -> bytes:
        return b'{"v":"' + self.version.encode() + b'",'

    def encode(self, rows: Sequence[Sequence[Any]]) -> bytes:
        """One record of ``rows`` (each in the order of ``columns``)."""
        n = len(rows)
        columns = list(zip(*rows, strict=True)) if n else [() for _ in self.columns]
        if len(columns) != len(self.columns):
            raise ColumnarFormatError(f"{self.version} rows must have {len(self.columns)} values")
        streams: list[bytes] = []
        for (name, kind), values in zip(self.columns, columns, strict=True):
            try:
                streams += KINDS[kind].write(values)
            except Exception as exc:  # the serializers' own errors too (None in a string)
                raise ColumnarFormatError(f"column {name} ({kind}): {exc}") from None
        head = json.dumps({"v": self.version, "n": n, "len": [len(s) for s in streams]},
                          separators=(",", ":"))  # fmt: skip
        return b"".join([head.encode(), b"\n", *streams])

    def split(self, value: bytes) -> tuple[int, list[bytes]]:
        """(row count, streams) of a record, every length checked against the record."""
        end = value.find(b"\n")
        try:
            if end < 0:
                raise ValueError("no head line")
            head = json.loads(value[:end])
            n, lengths = int(head["n"]), [int(x) for x in head["len"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise ColumnarFormatError(f"corrupt {self.version} record head: {exc}") from None
        expected = sum(k.streams for k in self.kinds)
        if head.get("v") != self.version or len(lengths) != expected or n < 0:
            raise ColumnarFormatError(f"{self.version} record head does not fit the format")
        if end + 1 + sum(lengths) != len(value):
            raise ColumnarFormatError(f"{self.version} record is {len(value)} bytes, its head "
                                      f"says {end + 1 + sum(lengths)}")  # fmt: skip
        streams, at = [], end + 1
        for length in lengths:
            streams.append(value[at : at + length])
            at += length
        return n, streams

    def decode(self, value: bytes) -> list[list[Any]]:
        """The rows of a record, as ``encode`` was given them."""
        n, streams = self.split(value)
        columns, at = [], 0
        try:
            for kind in self.kinds:
                column = kind.read(streams[at : at + kind.streams], n)
                at += kind.streams
                if len(column) != n:
                    raise ValueError(f"a {kind.name} column of {len(column)} values")
                columns.append(column)
        except Exception as exc:
            raise ColumnarFormatError(f"corrupt {self.version} record: {exc}") from None
        return list(map(list, zip(*columns, strict=True))) if n else []
