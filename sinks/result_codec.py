"""Query results as JSON that round-trips every ClickHouse value exactly.

The sink's query port answers in JSON, and the reader on the other end must get back the
values a direct clickhouse-connect query gives: exact Decimals (also inside arrays and
maps), dates, UUIDs, IP addresses, NaN and infinities. Plain JSON has none of these, so a
value of such a type travels as a one-key object ``{"$tag": text}``; maps travel as
``{"$map": [[key, value], ...]}`` so their keys keep their types and no user key can be
mistaken for a tag, and tuples as ``{"$tuple": [...]}`` (arrays are plain lists). Each type is one entry in ``CODECS``: adding a type is one line.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from ipaddress import IPv4Address, IPv6Address
from typing import Any
from uuid import UUID

from spendstream.errors import SpendstreamError


@dataclass(frozen=True)
class Codec:
    tag: str
    type: type
    encode: Callable[[Any], str]
    decode: Callable[[str], Any]


def _float_text(value: float) -> str:
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


#: Checked in order; datetime before date (a datetime is a date).
CODECS: tuple[Codec, ...] = (
    Codec("$decimal", Decimal, str, Decimal),
    Codec("$datetime", datetime, datetime.isoformat, datetime.fromisoformat),
    Codec("$date", date, date.isoformat, date.fromisoformat),
    Codec("$time", time, time.isoformat, time.fromisoformat),
    Codec("$timedelta", timedelta, lambda v: str(v // timedelta(microseconds=1)), lambda s: timedelta(microseconds=int(s))),
    Codec("$uuid", UUID, str, UUID),
    Codec("$ipv4", IPv4Address, str, IPv4Address),
    Codec("$ipv6", IPv6Address, str, IPv6Address),
    Codec("$bytes", bytes, lambda v: base64.b64encode(v).decode(), base64.b64decode),
    Codec("$float", float, _float_text, float),
)  # fmt: skip
_BY_TAG = {c.tag: c for c in CODECS}
_BY_TYPE: dict[type, Codec] = {}


def _codec_for(value: Any) -> Codec | None:
    kind = type(value)
    found = _BY_TYPE.get(kind)
    if found is None:
        found = next((c for c in CODECS if isinstance(value, c.type)), None)
        if found is not None:
            _BY_TYPE[kind] = found
    return found


class UnsupportedValue(SpendstreamError, TypeError):
    """A value with no JSON form here: add a Codec for its type."""


def to_json(value: Any) -> Any:
    """A JSON-ready form of ``value`` that ``from_json`` turns back into an equal value."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    if isinstance(value, list):
        return [to_json(v) for v in value]
    if isinstance(value, tuple):
        return {"$tuple": [to_json(v) for v in value]}
    if isinstance(value, dict):
        return {"$map": [[to_json(k), to_json(v)] for k, v in value.items()]}
    if isinstance(value, bytearray):
        value = bytes(value)
    codec = _codec_for(value)
    if codec is None:
        raise UnsupportedValue(f"no JSON form for a {type(value).__name__} value")
    return {codec.tag: codec.encode(value)}


def from_json(value: Any) -> Any:
    if isinstance(value, list):
        return [from_json(v) for v in value]
    if isinstance(value, dict):
        if len(value) == 1:
            ((tag, text),) = value.items()
            if tag == "$map":
                return {_hashable(from_json(k)): from_json(v) for k, v in text}
            if tag == "$tuple":
                return tuple(from_json(v) for v in text)
            codec = _BY_TAG.get(tag)
            if codec is not None:
                return codec.decode(text)
        raise ValueError(f"not an encoded value: {value!r:.80}")
    return value


def _hashable(value: Any) -> Any:
    return tuple(_hashable(v) for v in value) if isinstance(value, list) else value


def encode_result(columns: list[str], rows: list[tuple[Any, ...]]) -> bytes:
    """The body the query port sends: strict JSON (no NaN), every value tagged as needed."""
    body = {"columns": columns, "rows": [[to_json(v) for v in row] for row in rows]}
    return json.dumps(body, allow_nan=False, separators=(",", ":")).encode()


def decode_result(body: bytes) -> tuple[list[str], list[tuple[Any, ...]]]:
    data = json.loads(body)
    return list(data["columns"]), [tuple(from_json(v) for v in row) for row in data["rows"]]


def encode_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    return {str(k): to_json(v) for k, v in parameters.items()}


def decode_parameters(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ValueError("parameters must be a JSON object")
    return {str(k): from_json(v) for k, v in data.items()}
