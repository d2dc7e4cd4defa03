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
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from spendstream.schemas.avro import AvroCodec, RecordReader, schema_json

#: real table -> {record type on its topic: staging table} (migrations 0004 and 0007:
#: batch records, and the single records written before batches existed)
NATIVE_TABLES: dict[str, dict[str, str]] = {
    "cost_allocations": {
        "CostAllocationBatch": "cost_allocation_batches_avro",
        "CostAllocation": "cost_allocations_avro",
    },
}

#: sent with every native insert: fields an older writer schema lacks take the column default
INSERT_SETTINGS = {"input_format_avro_allow_missing_fields": 1}


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
    """Wrapper bodies of one partition's batch, grouped by the schema that wrote them
    (each group goes to the staging table of its record type)."""

    reader: AvroCodec | RecordReader
    prefix: bytes
    #: record type -> staging table (one type: ``reader`` is that type's codec)
    staging: dict[str, str] = field(default_factory=dict)
    #: id(writer schema) -> (writer schema, wrapper bodies, staging table)
    groups: dict[int, tuple[dict[str, Any], list[bytes], str]] = field(default_factory=dict)
    #: id(writer schema) -> index of each body in the sink's batch (for the fallback)
    indices: dict[int, list[int]] = field(default_factory=dict)

    def split(self, value: bytes) -> tuple[str, dict[str, Any], bytes]:
        """(record type, writer schema, body); AvroDecodeError when the framing is not ours."""
        if isinstance(self.reader, RecordReader):
            return self.reader.split(value)
        writer, body = self.reader.split(value)
        return self.reader.name, writer, body

    def add(self, value: bytes, offset: int, index: int) -> None:
        """Add one Kafka value; raises AvroDecodeError when its framing is not ours."""
        name, writer, body = self.split(value)
        self.add_body(name, writer, body, offset, index)

    def add_body(
        self, name: str, writer: dict[str, Any], body: bytes, offset: int, index: int
    ) -> None:
        group = self.groups.get(id(writer))
        if group is None:
            group = self.groups[id(writer)] = (writer, [], self.staging.get(name, ""))
            self.indices[id(writer)] = []
        group[1].append(self.prefix + avro_long(offset) + body)
        self.indices[id(writer)].append(index)
