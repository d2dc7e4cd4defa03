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

Batch records of the price stage (schemas/batches.py: JSON rows) go the same way: each
record becomes one JSONCompactEachRow line ``["topic",partition,offset,ROWS]`` into the
staging table of migration 0007, ROWS being the record's own text: again nothing is
decoded in Python.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from spendstream.schemas import batches
from spendstream.schemas.avro import AvroCodec, schema_json

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
        out = []
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
