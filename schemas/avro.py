"""Avro wire format: single-object encoding by default, Confluent framing when configured.

Single-object encoding (Avro spec) prefixes the body with ``C3 01`` and the 8-byte
little-endian CRC-64-AVRO fingerprint of the writer schema, so no registry is needed:
a reader keeps every schema version it knows by fingerprint and resolves old records
against the newest reader schema. Confluent framing (``00`` + 4-byte schema id) is
accepted when a registry lookup function is supplied.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from decimal import Decimal
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple, cast
from urllib.parse import urlsplit

import fastavro
import fastavro.schema

from spendstream.errors import SpendstreamError, UserError

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = b"\x00"
NAMESPACE = "dev.spendstream"


class AvroDecodeError(UserError, ValueError):
    """A record that cannot be decoded; the message says why in plain words."""


def schema_dir() -> Path:
    return Path(str(resources.files("spendstream.schemas")))


@cache
def load(name: str) -> dict[str, Any]:
    """Parsed schema for a short name like 'UsageEvent' (latest version)."""
    path = schema_dir() / f"{NAMESPACE}.{name}.avsc"
    return fastavro.schema.load_schema(str(path))  # type: ignore[return-value]


def fingerprint(schema: dict[str, Any]) -> bytes:
    canonical = fastavro.schema.to_parsing_canonical_form(schema)
    value = int(fastavro.schema.fingerprint(canonical, "CRC-64-AVRO"), 16)
    return value.to_bytes(8, "little")


def _history(name: str) -> list[dict[str, Any]]:
    """Older versions of a schema kept as ``history/<Name>.vN.avsc`` (writer schemas only)."""
    found = []
    hist = schema_dir() / "history"
    if hist.is_dir():
        for path in sorted(hist.glob(f"{NAMESPACE}.{name}.v*.avsc")):
            found.append(
                cast(dict[str, Any], fastavro.schema.load_schema(str(path), _write_hint=False))
            )
    return found


class AvroCodec:
    """Encode and decode one record type.

    ``registry_lookup`` maps a Confluent schema id to a writer schema (JSON dict); without it,
    Confluent-framed records are rejected with a clear reason.
    """

    def __init__(
        self,
        name: str,
        *,
        confluent_schema_id: int | None = None,
        registry_lookup: Callable[[int], dict[str, Any]] | None = None,
    ) -> None:
        self.name = name
        self.schema = load(name)
        self.header = SINGLE_OBJECT_MAGIC + fingerprint(self.schema)
        self._writers: dict[bytes, dict[str, Any]] = {fingerprint(self.schema): self.schema}
        for old in _history(name):
            parsed = cast(dict[str, Any], fastavro.parse_schema(old))
            self._writers.setdefault(fingerprint(parsed), parsed)
        self._confluent_id = confluent_schema_id
        self._registry_lookup = registry_lookup
        self._registry_cache: dict[int, dict[str, Any]] = {}
        self._decimals = decimal_fields(self.schema)

    @property
    def known_fingerprints(self) -> set[bytes]:
        return set(self._writers)

    def encode(self, record: dict[str, Any]) -> bytes:
        buf = io.BytesIO()
        if self._confluent_id is not None:
            buf.write(CONFLUENT_MAGIC + struct.pack(">I", self._confluent_id))
        else:
            buf.write(self.header)
        if self._decimals:
            record = self._with_decimal_bytes(record)
        fastavro.schemaless_writer(buf, self.schema, record)
        return buf.getvalue()

    def _with_decimal_bytes(self, record: dict[str, Any]) -> dict[str, Any]:
        """``record`` with its top-level Decimal fields already in their Avro bytes: fastavro
        converts a Decimal digit by digit (~10 us each, measured; a status has eight and a
        worker writes a thousand statuses a second), ``decimal_bytes`` in ~0.5 us. A value
        of a ``["null", decimal]`` union goes as fastavro's ``("bytes", value)`` notation,
        which names the branch: otherwise fastavro tries each branch against the value
        (~1 us a field; a status encoded 34 -> 25 us, measured)."""
        record = dict(record)
        for name, found in self._decimals.items():
            value = record.get(name)
            if found.in_map:
                if value:
                    record[name] = {
                        k: decimal_bytes(v, found.scale) if isinstance(v, Decimal) else v
                        for k, v in value.items()
                    }
            elif isinstance(value, Decimal):
                data = decimal_bytes(value, found.scale)
                record[name] = ("bytes", data) if found.in_union else data
        return record

    def split(self, data: bytes) -> tuple[dict[str, Any], bytes]:
        """(writer schema, Avro body) of a framed record, without decoding the body."""
        if not data:
            raise AvroDecodeError("empty message: expected an Avro-encoded record")
        if data[:2] == SINGLE_OBJECT_MAGIC:
            if len(data) < 10:
                raise AvroDecodeError("truncated header: fewer than 10 bytes")
            writer = self._writers.get(data[2:10])
            if writer is None:
                raise AvroDecodeError(
                    f"unknown schema fingerprint {data[2:10].hex()} for {self.name}: "
                    "written with a schema this worker does not know"
                )
            return writer, data[10:]
        if data[:1] == CONFLUENT_MAGIC and len(data) >= 5:
            schema_id = struct.unpack(">I", data[1:5])[0]
            return self._confluent_writer(schema_id), data[5:]
        raise AvroDecodeError(
            f"not Avro single-object or Confluent framed (starts with {data[:2].hex()})"
        )

    def decode(self, data: bytes) -> dict[str, Any]:
        writer, body = self.split(data)
        try:
            stream = io.BytesIO(body)
            # a record of the current schema needs no resolution (and skipping it is cheaper)
            reader = None if writer is self.schema else self.schema
            record = fastavro.schemaless_reader(stream, writer, reader)
        except Exception as exc:  # fastavro raises many types on corrupt input
            raise AvroDecodeError(f"corrupt or truncated Avro body: {exc}") from exc
        if stream.tell() != len(body):
            raise AvroDecodeError(f"{len(body) - stream.tell()} trailing bytes after the record")
        return record  # type: ignore[return-value]

    def _confluent_writer(self, schema_id: int) -> dict[str, Any]:
        if schema_id in self._registry_cache:
            return self._registry_cache[schema_id]
        if self._registry_lookup is None:
            raise AvroDecodeError(
                f"Confluent-framed record (schema id {schema_id}) but no schema registry "
                "is configured (set SPENDSTREAM_SCHEMA_REGISTRY_URL)"
            )
        try:
            writer = cast(dict[str, Any], fastavro.parse_schema(self._registry_lookup(schema_id)))
        except Exception as exc:
            raise AvroDecodeError(f"schema id {schema_id} not resolvable: {exc}") from exc
        self._registry_cache[schema_id] = writer
        return writer


class DecimalField(NamedTuple):
    """Where a bytes ``decimal`` sits in a record's top-level field."""

    scale: int
    #: the values of a map
    in_map: bool = False
    #: the only ``bytes`` branch of a union (with null): named when written
    in_union: bool = False


def decimal_fields(schema: dict[str, Any]) -> dict[str, DecimalField]:
    """Top-level fields of a record schema holding a bytes ``decimal`` (alone, in a union
    with null, or as the values of a map), by name. A union with another bytes branch is
    left out: fastavro picks the branch of such a value from its type."""

    def scale_of(branch: Any) -> int | None:
        if isinstance(branch, dict) and branch.get("logicalType") == "decimal":
            return int(branch.get("scale", 0)) if branch.get("type") == "bytes" else None
        return None

    def is_bytes(branch: Any) -> bool:
        return branch == "bytes" or (isinstance(branch, dict) and branch.get("type") == "bytes")

    found: dict[str, DecimalField] = {}
    for field in schema.get("fields", []):
        kind = field["type"]
        branches = kind if isinstance(kind, list) else [kind]
        union = isinstance(kind, list)
        if union and sum(map(is_bytes, branches)) > 1:
            continue  # which bytes branch a value takes: fastavro decides from the Decimal
        for branch in branches:
            if isinstance(branch, dict) and branch.get("type") == "map":
                scale = scale_of(branch.get("values"))
                if scale is not None:
                    found[field["name"]] = DecimalField(scale, in_map=True)
            else:
                scale = scale_of(branch)
                if scale is not None:
                    found[field["name"]] = DecimalField(scale, in_union=union)
    return found


def decimal_bytes(value: Decimal, scale: int) -> bytes:
    """The Avro ``decimal`` bytes of ``value`` at ``scale`` (big-endian two's complement
    of the unscaled integer); a value with more fractional digits is refused, as fastavro
    refuses it, never rounded."""
    unscaled = value.scaleb(scale)
    number = int(unscaled)
    if number != unscaled:
        raise ValueError(f"{value} has more than {scale} fractional digits")
    return number.to_bytes(number.bit_length() // 8 + 1, "big", signed=True)


_registry: Any = None  # RegistryClient when SPENDSTREAM_SCHEMA_REGISTRY_URL is set
#: the registry URL this process was configured with ("" = none: single-object
#: encoding); None until configure_registry or ensure_registry first ran
_configured_url: str | None = None


class RegistryConflict(UserError):
    """A second schema registry asked of a process that frames with another one."""


def configure_registry(url: str | None) -> None:
    """Use Confluent framing (and resolve Confluent ids) through the registry at ``url``
    (None or "": single-object encoding). Once per process, at its edge: the CLI's
    settings callback or a process entry point. Library code never calls this: every
    codec of the process follows it, whoever holds them."""
    global _registry, _configured_url
    from .registry import RegistryClient

    _registry = RegistryClient(url) if url else None
    _configured_url = url or ""
    codec.cache_clear()
    framed_codec.cache_clear()


def ensure_registry(url: str | None) -> None:
    """Configure the registry at ``url`` if this process has not configured one yet; if
    it has, check that it is the same. For entry points a program may call without the
    CLI (the producer SDK, a worker built in a test): they never switch the framing of
    codecs other code of the process already uses."""
    if _configured_url is None:
        configure_registry(url)
        return
    wanted = url or ""
    if wanted != _configured_url:

        def describe(u: str) -> str:
            host = urlsplit(u).netloc.rpartition("@")[2] or u  # never its user:password
            return f"the schema registry at {host}" if u else "no schema registry"

        raise RegistryConflict(
            f"this process already frames Avro records for {describe(_configured_url)}; "
            f"these settings name {describe(wanted)} (SPENDSTREAM_SCHEMA_REGISTRY_URL): "
            "one process talks to one registry"
        )


@cache
def codec(name: str) -> AvroCodec:
    """Shared reader (and single-object writer) per record type; accepts both framings."""
    return AvroCodec(name, registry_lookup=_registry.schema if _registry else None)


@cache
def framed_codec(name: str, topic: str) -> AvroCodec:
    """Writer for ``topic``: Confluent framing when a registry is configured, else single-object."""
    if _registry is None:
        return codec(name)
    schema_id = _registry.register(f"{topic}-value", schema_json(load(name)))
    return AvroCodec(name, confluent_schema_id=schema_id, registry_lookup=_registry.schema)


def schema_json(schema: Any) -> Any:
    """A parsed schema as plain, fully expanded Avro JSON (for registries and archives)."""

    def clean(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: clean(v) for k, v in node.items() if not k.startswith("__")}
        if isinstance(node, list):
            return [clean(v) for v in node]
        return node

    return clean(fastavro.schema.expand_schema(schema))


class IncompatibleSchema(SpendstreamError, ValueError):
    """A reader schema that cannot read records written with an older schema."""


def check_backward_compatible(
    writer: dict[str, Any], reader: dict[str, Any], samples: int = 200
) -> None:
    """Prove ``reader`` reads what ``writer`` wrote: random records through Avro resolution.

    fastavro generates records from the writer schema, encodes them with it and decodes
    them with the reader schema; any resolution failure (a new field without a default, a
    type that cannot be promoted, a removed union branch) raises IncompatibleSchema.
    """
    from fastavro.utils import generate_many

    parsed_writer = fastavro.parse_schema(writer)
    parsed_reader = fastavro.parse_schema(reader)
    for record in generate_many(parsed_writer, samples):
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, parsed_writer, record)
        buf.seek(0)
        try:
            fastavro.schemaless_reader(buf, parsed_writer, parsed_reader)
        except Exception as exc:
            raise IncompatibleSchema(f"{reader.get('name')}: {exc}") from exc


def history_versions(name: str) -> list[dict[str, Any]]:
    """Every archived writer schema of ``name`` (oldest first)."""
    return _history(name)
