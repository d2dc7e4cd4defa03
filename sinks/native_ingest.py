"""Native Avro ingest: ClickHouse decodes the Avro records in C++, not the sink in Python.

Decoding each record with fastavro and serializing it again for ClickHouse costs the sink
about 30 us a row; ClickHouse's own Avro reader does the same work in a fraction of that.
Avro encodes a record as the plain concatenation of its fields, so a Kafka value's body
prefixed with the encoded Kafka position is the body of a wrapper record

    {_topic: string, _partition: int, _offset: long, value: <writer schema>}

and concatenated wrapper bodies form one block of an Avro object container file. The sink
sends that file with FORMAT Avro into a Null-engine staging table; a materialized view
(migration 0004) flattens it into the real table. Nothing is decoded in Python: the
framing is checked (a known schema fingerprint or registry id), and a batch ClickHouse
refuses as data falls back to the decode-per-row path, which finds the poison records.

Batch records of the price stage in a JSON format (schemas/batches.py) go the same way: each
record becomes one JSONCompactEachRow line ``["topic",partition,offset,ROWS]`` into the
staging table of migration 0007, ROWS being the record's own text: again nothing is
decoded in Python.

Columnar batch records (schemas/columnar.py: ``priced/3``, ``allocations/2``) skip the text
and the view: the records of one partition's batch become ONE Native block for the table
itself (``native_block``), each column the record's own column bytes joined, plus the
Kafka position columns. One block, not one per record: ClickHouse spends about 1 ms on each
block it is given (measured: 500 blocks of 200 rows took 0.8 s, 20 of 5,000 rows 0.3 s).
"""

from __future__ import annotations

import json
import os
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from clickhouse_connect.driver.common import write_leb128

from spendstream.schemas import batches
from spendstream.schemas.avro import AvroCodec, schema_json
from spendstream.schemas.columnar import ColumnarFormat

#: Which tables take this path, and through which staging tables: ``NativePath`` in
#: sinks/tables.py.

#: sent with every native insert: fields an older writer schema lacks take the column default;
#: batch rows are JSON arrays, not objects (chDB 4 reads a named tuple as an object by
#: default and refused every batch record, which then went the slow decoded path)
#: ``optimize_on_insert`` off: ClickHouse does not merge each block by the table's sorting key
#: before writing it (a ReplacingMergeTree would collapse duplicate ids inside the block); the
#: rows of one batch are distinct already, replays are skipped by the watermarks, and
#: queries use FINAL for what merges later (measured on chDB: ~1.6x faster inserts).
INSERT_SETTINGS = {
    "input_format_avro_allow_missing_fields": 1,
    "input_format_json_named_tuples_as_objects": 0,
    "optimize_on_insert": 0,
}


def avro_long(n: int) -> bytes:
    """Avro's zig-zag varint encoding of an int or long."""
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n & ~0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def avro_string(text: str) -> bytes:
    data = text.encode()
    return avro_long(len(data)) + data


def position_prefix(topic: str, partition: int) -> bytes:
    """Encoded ``_topic`` and ``_partition`` of the wrapper record (``_offset`` follows)."""
    return avro_string(topic) + avro_long(partition)


def wrapper_schema(writer: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "record",
        "name": "dev.spendstream.sink.KafkaRecord",
        "fields": [
            {"name": "_topic", "type": "string"},
            {"name": "_partition", "type": "int"},
            {"name": "_offset", "type": "long"},
            {"name": "value", "type": schema_json(writer)},
        ],
    }


def container(writer: dict[str, Any], bodies: list[bytes]) -> bytes:
    """An Avro object container file with one block holding ``bodies`` (wrapper records)."""
    meta = {
        "avro.schema": json.dumps(wrapper_schema(writer)).encode(),
        "avro.codec": b"null",
    }
    sync = os.urandom(16)
    header = b"".join(
        [
            b"Obj\x01",
            avro_long(len(meta)),
            *(avro_string(k) + avro_long(len(v)) + v for k, v in meta.items()),
            avro_long(0),
            sync,
        ]
    )
    block = b"".join(bodies)
    return b"".join([header, avro_long(len(bodies)), avro_long(len(block)), block, sync])


@dataclass
class NativeBatch:
    """One partition's batch for ClickHouse to decode: single Avro records as wrapper
    bodies grouped by the schema that wrote them, batch records as JSON lines grouped by
    format; each group is one insert into its staging table."""

    #: reads the framing of single Avro records (None: the table takes batch records only)
    codec: AvroCodec | None
    prefix: bytes
    #: JSON line head: the record's topic and partition
    position: bytes = b""
    #: batch format -> staging table
    batch_staging: dict[str, str] = field(default_factory=dict)
    #: group key -> (writer schema, or None for JSON lines; bodies; staging table)
    groups: dict[object, tuple[dict[str, Any] | None, list[bytes], str]] = field(
        default_factory=dict
    )
    #: group key -> index of each body in the sink's batch (for the fallback)
    indices: dict[object, list[int]] = field(default_factory=dict)
    staging: str = ""
    #: columnar format -> (table, its column names in the format's order)
    columnar: dict[str, tuple[str, Sequence[str]]] = field(default_factory=dict)
    #: columnar format -> (row count, streams, Kafka offset) of each record
    columnar_parts: dict[str, list[tuple[int, list[bytes], int]]] = field(default_factory=dict)
    topic: str = ""
    partition: int = 0

    @property
    def empty(self) -> bool:
        return not self.groups and not self.columnar_parts

    def add(self, value: bytes, offset: int, index: int) -> None:
        """Add one single Avro record; raises AvroDecodeError when its framing is not ours."""
        assert self.codec is not None, "this table takes no single Avro records natively"
        writer, body = self.codec.split(value)
        group = self._group(id(writer), writer, self.staging)
        group[1].append(self.prefix + avro_long(offset) + body)
        self.indices[id(writer)].append(index)

    def add_rows(self, version: str, rows: bytes, offset: int, index: int) -> None:
        """Add one batch record's rows (its JSON text); BatchFormatError for a format that
        has no staging table."""
        staging = self.batch_staging.get(version)
        if staging is None:
            raise batches.BatchFormatError(f"no staging table for {version} records")
        group = self._group(version, None, staging)
        group[1].append(b"[" + self.position + str(offset).encode() + b"," + rows + b"]\n")
        self.indices[version].append(index)

    def add_columnar(self, version: str, value: bytes, offset: int, index: int) -> int:
        """Add one columnar batch record; its row count. BatchFormatError when its head does
        not fit its format (the sink dead-letters it) or no table takes the format."""
        if version not in self.columnar:
            raise batches.BatchFormatError(f"no table takes {version} records natively")
        try:
            n, streams = batches.COLUMNAR[version].split(value)
        except ValueError as exc:
            raise batches.BatchFormatError(str(exc)) from None
        self.columnar_parts.setdefault(version, []).append((n, streams, offset))
        self.indices.setdefault(version, []).append(index)
        return n

    def _group(
        self, key: object, writer: dict[str, Any] | None, staging: str
    ) -> tuple[dict[str, Any] | None, list[bytes], str]:
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = (writer, [], staging)
            self.indices[key] = []
        return group

    def payloads(self) -> list[tuple[object, str, str, bytes]]:
        """(group key, staging table, input format, data) per insert."""
        out: list[tuple[object, str, str, bytes]] = []
        for version, parts in self.columnar_parts.items():
            table, names = self.columnar[version]
            block = native_block(batches.COLUMNAR[version], names, self.topic, self.partition,
                                 parts)  # fmt: skip
            out.append((version, table, "Native", block))
        for key, (writer, bodies, staging) in self.groups.items():
            if writer is None:
                out.append((key, staging, "JSONCompactEachRow", b"".join(bodies)))
            else:
                out.append((key, staging, "Avro", container(writer, bodies)))
        return out


def json_position(topic: str, partition: int) -> bytes:
    """The head of a JSON line: ``"topic",partition,`` (the offset follows)."""
    import json

    return json.dumps(topic).encode() + b"," + str(partition).encode() + b","


def native_block(
    fmt: ColumnarFormat, names: Sequence[str], topic: str, partition: int,
    parts: list[tuple[int, list[bytes], int]],
) -> bytes:  # fmt: skip
    """One ClickHouse Native block of many columnar records of one partition: per column, the
    records' streams joined in order (an array's offsets shifted by the elements of the
    records before it), then ``_topic``, ``_partition`` and ``_offset`` (each record's
    position, repeated for its rows). Nothing is decoded: the values are the records' bytes.
    """
    if len(names) != len(fmt.columns):
        raise ValueError(f"{fmt.version} has {len(fmt.columns)} columns, {len(names)} names")
    total = sum(n for n, _, _ in parts)
    out = bytearray()
    write_leb128(len(names) + 3, out)
    write_leb128(total, out)
    at = 0
    for name, kind in zip(names, fmt.kinds, strict=True):
        _head(out, name, kind.native_type)
        first = at
        if kind.offsets:
            base = 0
            for _, streams, _ in parts:
                ends = array("Q")
                ends.frombytes(streams[first])
                if base:
                    ends = array("Q", [end + base for end in ends])
                out += ends
                if ends:
                    base = ends[-1]
            first += 1
        for stream in range(first, at + kind.streams):
            for _, streams, _ in parts:
                out += streams[stream]
        at += kind.streams
    text = topic.encode()
    value = bytearray()
    write_leb128(len(text), value)
    value += text
    _head(out, "_topic", "String")
    for n, _, _ in parts:
        out += bytes(value) * n
    _head(out, "_partition", "Int32")
    out += array("i", [partition]).tobytes() * total
    _head(out, "_offset", "Int64")
    for n, _, offset in parts:
        out += array("q", [offset]).tobytes() * n
    return bytes(out)


def _head(out: bytearray, name: str, native_type: str) -> None:
    for text in (name.encode(), native_type.encode()):
        write_leb128(len(text), out)
        out += text
