"""Query results travel as strict JSON and come back equal, value for value."""

from __future__ import annotations

import json
import math
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from ipaddress import IPv4Address, IPv6Address
from uuid import UUID

import pytest

from spendstream.sinks.result_codec import (
    UnsupportedValue,
    decode_parameters,
    decode_result,
    encode_parameters,
    encode_result,
)

ROW = (
    Decimal("12345678901.123456789"),
    [Decimal("0.000000001"), Decimal("-2.5")],
    {"a": Decimal("1.1"), "$decimal": "not a tag"},
    {1: "one", 2: "two"},
    (1, "x", Decimal("3")),
    date(1950, 1, 2),
    datetime(2026, 11, 26, 10, 0, 0, 123456),
    datetime(2026, 11, 26, 10, 0, tzinfo=UTC),
    time(12, 30, 1, 5),
    timedelta(days=3, microseconds=7),
    UUID("6f1c2b9e-5a4d-4c3b-9a1e-0d2f3c4b5a69"),
    IPv4Address("10.1.2.3"),
    IPv6Address("2001:db8::1"),
    b"\x00\xffraw",
    2**200,
    -(2**127),
    True,
    None,
    "text",
    1.5,
    float("inf"),
    float("-inf"),
)


def test_every_value_round_trips_exactly():
    columns, rows = decode_result(encode_result(list("abcdefghijklmnopqrstuv"), [ROW]))
    assert columns == list("abcdefghijklmnopqrstuv")
    assert rows == [ROW]
    assert [type(v) for v in rows[0]] == [type(v) for v in ROW]


def test_nan_is_strict_json_and_comes_back_as_nan():
    body = encode_result(["f"], [(float("nan"),)])

    def refuse(constant: str) -> None:
        raise AssertionError(f"invalid JSON constant {constant}")

    json.loads(body, parse_constant=refuse)
    assert math.isnan(decode_result(body)[1][0][0])


def test_parameters_round_trip():
    params = {"since": datetime(2026, 1, 1, tzinfo=UTC), "limit": Decimal("10.5"), "n": 3}
    assert decode_parameters(json.loads(json.dumps(encode_parameters(params)))) == params
    with pytest.raises(ValueError):
        decode_parameters([1])
    with pytest.raises(ValueError):
        decode_parameters({"x": {"$nope": 1}})


def test_an_unknown_type_is_a_clear_error():
    with pytest.raises(UnsupportedValue, match="object"):
        encode_result(["x"], [(object(),)])
