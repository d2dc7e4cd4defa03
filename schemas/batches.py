"""Batch records of the internal topics (usage.priced, cost-allocations): JSON rows.

A batch record holds what one processed input batch produced for one partition:

    {"v":"allocations/1","rows":[[...],[...]]}

each row a JSON array in the order of the format's columns below. Money is integer
nano-units, times integer microseconds since the epoch (UTC), so nothing is a float and
every figure is exact. ``v`` names the format and its version; a reader refuses a version
it does not know (the record goes to the DLQ with the reason, never half-read).

Why JSON rather than Avro for these two topics: they are read only by our own stages and
by ClickHouse, and per record fastavro costs more than the rest of the price stage's work
(measured on this 2-core machine: an allocation as an Avro record ~46 us to encode and
~24 us to decode; as a JSON array ~4 and ~3 us; docs/design.md). ClickHouse reads the rows
natively (JSONCompactEachRow, migration 0007). The public topics (usage.*, budget-alerts,
budget-status, budgets, alert-actions, usage.dlq) stay Avro contracts.

The price stage now writes the same rows in columnar form (``priced/3``, ``allocations/2``:
schemas/columnar.py), which ClickHouse takes as Native blocks without parsing text; the JSON
formats stay readable by every reader, so records written before are not stranded.
``encode``/``decode`` take and give rows in any of these formats alike.
"""

from __future__ import annotations

import json
from typing import Any

from spendstream.errors import SpendstreamError

from .columnar import ColumnarFormat, ColumnarFormatError

ALLOCATIONS_V1 = "allocations/1"
#: columns of an allocation row (cost_allocations holds the same, with Decimal and times)
ALLOCATION_COLUMNS = (
    "event_id", "budget_id", "matched_via", "period_key", "period_start_us", "period_end_us",
    "occurred_at_us", "amount_nanos", "currency", "source", "provider", "model", "org",
    "team", "project", "user", "department", "feature", "tags", "origin_topic",
    "origin_partition", "origin_offset",
)  # fmt: skip
A = {name: index for index, name in enumerate(ALLOCATION_COLUMNS)}

PRICED_V1 = "priced/1"
#: columns of a priced row; ``event`` is the usage event as it arrived (framed Avro),
#: base64; ``components`` a list of [name, quantity in nano-units, unit, amount in nanos]
PRICED_COLUMNS = (
    "event", "cost_nanos", "currency", "priced", "components", "price_source",
    "price_version", "origin_topic", "origin_partition", "origin_offset", "priced_at_us",
)  # fmt: skip
P = {name: index for index, name in enumerate(PRICED_COLUMNS)}

PRICED_V2 = "priced/2"
#: columns of a ``priced/2`` row: the priced event flattened into the columns of ClickHouse's
#: priced_usage, in its order, so ClickHouse reads the rows itself (migration 0012) where a
#: ``priced/1`` row's event is Avro inside JSON, with the payload a union of four records
#: that only Python decoded. Columns a payload kind lacks hold 0 or "" (as priced_usage
#: stores them); compute units, cost and component figures are nano-units, times microseconds.
PRICED2_COLUMNS = (
    "event_id", "occurred_at_us", "source", "provider", "model", "operation",
    "org", "team", "project", "user", "department", "session", "feature", "tags",
    "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
    "reasoning_tokens", "images", "cache_write_1h_tokens", "service_tier", "batch",
    "actor_id", "run_id", "platform", "workflow_id", "execution_id", "status",
    "compute_units_nanos", "results", "tasks", "operations", "duration_ms", "category",
    "cost_nanos", "currency", "priced", "components", "price_source", "price_version",
    "origin_topic", "origin_partition", "origin_offset", "priced_at_us",
)  # fmt: skip
P2 = {name: index for index, name in enumerate(PRICED2_COLUMNS)}


CONVERSIONS_V1 = "conversions/1"
#: columns of a conversion row: an allocation in another currency than its budget's, as
#: the aggregator converted it (``rate`` a decimal string, ``rate_day`` YYYY-MM-DD: the day
#: whose reference rate applied; amounts in nano-units of each currency)
CONVERSION_COLUMNS = (
    "event_id", "budget_id", "period_key", "occurred_at_us", "amount_nanos", "currency",
    "budget_currency", "rate", "rate_day", "budget_amount_nanos", "converted_at_us",
)  # fmt: skip
C = {name: index for index, name in enumerate(CONVERSION_COLUMNS)}

ALLOCATIONS_V2 = "allocations/2"
PRICED_V3 = "priced/3"

#: columnar formats: the columns of a JSON format, each with its kind (schemas/columnar.py)
COLUMNAR = {
    ALLOCATIONS_V2: ColumnarFormat(ALLOCATIONS_V2, tuple(zip(ALLOCATION_COLUMNS, (
        "str", "str", "str", "str", "micros", "micros", "micros", "nanos", "str", "str",
        "str", "str", "str", "str", "str", "str", "str", "str", "str_map", "str", "i32",
        "i64",
    ), strict=True))),
    PRICED_V3: ColumnarFormat(PRICED_V3, tuple(zip(PRICED2_COLUMNS, (
        "str", "micros", "str", "str", "str", "str",
        "str", "str", "str", "str", "str", "str", "str", "str_map",
        "u64", "u64", "u64", "u64", "u64", "u64", "u64", "str", "u8",
        "str", "str", "str", "str", "str", "str",
        "nanos", "u64", "u64", "u64", "u64", "str",
        "nanos", "str", "u8", "cost_lines", "str", "str", "str", "i32", "i64", "micros",
    ), strict=True))),
}  # fmt: skip

FORMATS = {
    ALLOCATIONS_V1: ALLOCATION_COLUMNS,
    ALLOCATIONS_V2: ALLOCATION_COLUMNS,
    PRICED_V1: PRICED_COLUMNS,
    PRICED_V2: PRICED2_COLUMNS,
    PRICED_V3: PRICED2_COLUMNS,
    CONVERSIONS_V1: CONVERSION_COLUMNS,
}

#: the allocation formats: readers of allocations accept each of them
ALLOCATIONS = frozenset({ALLOCATIONS_V1, ALLOCATIONS_V2})


class BatchFormatError(SpendstreamError, ValueError):
    """Not a batch record of a format this reader knows; the message says why."""


def prefix(version: str) -> bytes:
    return b'{"v":"' + version.encode() + b'","rows":'


_PREFIXES = {version: prefix(version) for version in FORMATS if version not in COLUMNAR}
_PREFIXES.update({version: fmt.prefix for version, fmt in COLUMNAR.items()})


def encode(version: str, rows: list[list[Any]]) -> bytes:
    """One batch record. ``rows`` hold only JSON types (no float on a money path)."""
    columnar = COLUMNAR.get(version)
    if columnar is not None:
        try:
            return columnar.encode(rows)
        except (TypeError, OverflowError, ColumnarFormatError) as exc:
            raise BatchFormatError(f"cannot write {version} rows: {exc}") from None
    body = json.dumps(rows, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return _PREFIXES[version] + body.encode() + b"}"


def is_batch(value: bytes | None) -> bool:
    """A JSON batch record (an Avro record starts with its framing: C3 01 or 00)."""
    return bool(value) and value[:1] == b"{"  # type: ignore[index]


def version_of(value: bytes) -> str:
    for version, head in _PREFIXES.items():
        if value.startswith(head):
            return version
    start = value[:60].decode("utf-8", "replace")
    raise BatchFormatError(f"unknown batch format (record starts {start!r})")


def rows_text(value: bytes, version: str) -> bytes:
    """The JSON array of rows of a batch record, as it is (ClickHouse reads it)."""
    head = _PREFIXES[version]
    if not value.startswith(head) or not value.endswith(b"}"):
        raise BatchFormatError(f"not a {version} batch record")
    return value[len(head) : -1]


def decode(value: bytes) -> tuple[str, list[list[Any]]]:
    """(format version, rows); every row checked for its column count."""
    version = version_of(value)
    columnar = COLUMNAR.get(version)
    if columnar is not None:
        try:
            return version, columnar.decode(value)
        except ColumnarFormatError as exc:
            raise BatchFormatError(str(exc)) from None
    try:
        rows = json.loads(rows_text(value, version))
    except ValueError as exc:
        raise BatchFormatError(f"corrupt {version} batch record: {exc}") from None
    width = len(FORMATS[version])
    if not isinstance(rows, list) or any(not isinstance(r, list) or len(r) != width for r in rows):
        raise BatchFormatError(f"{version} rows must be arrays of {width} values")
    return version, rows
