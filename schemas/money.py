"""Exact money: Decimal with 9 fractional digits (nano-units), never float.

A cost is computed exactly, then rounded once (half-even) to nano-units per cost line;
the rounded lines are the canonical amounts that every store sums, so Kafka state,
ClickHouse and the input agree to the last nano-unit.
"""

from __future__ import annotations

import math
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

from spendstream.errors import UserError

SCALE = 9
NANO = Decimal(1).scaleb(-SCALE)
MAX_MONEY = Decimal(10) ** (38 - SCALE) - NANO


class MoneyError(UserError, ValueError):
    pass


def float_refusal(value: float) -> str:
    """Why a float amount is refused and how to fix it: JSON and YAML read an unquoted
    ``10.1`` as a binary float, which is not 10.1 and keeps only about 16 digits."""
    text = repr(value)
    if not math.isfinite(value):
        return f"{text} is not a finite amount"
    digits = len(text.split("e")[0].replace("-", "").replace(".", "").strip("0"))
    if digits >= 16:  # a float this long may already have lost digits of the input
        return (
            f"{text} is a float (inexact, digits may already be lost); quote the amount "
            "exactly as written, as a string"
        )
    return f'{text} is a float (inexact); quote it: "{text}"'


def money(value: Decimal | int | str) -> Decimal:
    """Round to nano-units. Floats are refused: they are not exact."""
    if isinstance(value, float):
        raise MoneyError(float_refusal(value))
    try:
        amount = Decimal(value).quantize(NANO, rounding=ROUND_HALF_EVEN)
    except (InvalidOperation, ValueError) as exc:
        raise MoneyError(f"not a decimal amount: {value!r}") from exc
    if not amount.is_finite() or abs(amount) > MAX_MONEY:
        raise MoneyError(f"amount out of range: {value!r}")
    return amount


def to_nanos(value: Decimal) -> int:
    """Exact integer nano-units of an amount (raises if it is not already rounded)."""
    scaled = value.scaleb(SCALE)
    if scaled != scaled.to_integral_value():
        raise MoneyError(f"{value} has more than {SCALE} fractional digits")
    return int(scaled)


def from_nanos(nanos: int) -> Decimal:
    return (Decimal(nanos).scaleb(-SCALE)).quantize(NANO)


def fmt(value: Decimal, currency: str = "") -> str:
    """Human format keeping every significant digit (no float rounding)."""
    text = format(value.normalize(), "f") if value else "0"
    if "." not in text:
        text += ".00"
    elif len(text.split(".")[1]) < 2:
        text += "0"
    return f"{text} {currency}".strip()


def plain(value: Decimal) -> str:
    """Shortest exact text without exponent: 50 not 5E+1, 0.25 not 0.250000000."""
    text = format(value.normalize(), "f")
    return text
