"""The exchange-rate contract: ``FxRate`` records on the compacted fx-rates topic."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field

from .avro import codec
from .models import AwareDatetime, Currency, Strict, _refuse_float

#: decimal places the contract carries (FxRate.rate is decimal(38, 12))
RATE_SCALE = 12


def _rate(value: Decimal) -> Decimal:
    if not value.is_finite() or value <= 0:
        raise ValueError("must be a positive number")
    if value != value.quantize(Decimal(1).scaleb(-RATE_SCALE)):
        raise ValueError(f"has more than {RATE_SCALE} decimal places")
    if value >= Decimal(10) ** (38 - RATE_SCALE):
        raise ValueError("is too large")
    return value.quantize(Decimal(1).scaleb(-RATE_SCALE))


RateValue = Annotated[Decimal, BeforeValidator(_refuse_float), AfterValidator(_rate)]


class FxRate(Strict):
    """1 ``base`` = ``rate`` ``quote`` on ``day`` (a reference rate, e.g. the ECB's)."""

    day: date
    base: Currency
    quote: Currency
    rate: RateValue
    source: Annotated[str, Field(max_length=256)] = ""
    published_at: AwareDatetime = Field(default_factory=lambda: datetime.now(UTC))

    @property
    def key(self) -> str:
        return f"{self.base}/{self.quote}/{self.day.isoformat()}"

    def to_avro(self) -> dict[str, Any]:
        return self.model_dump()

    @classmethod
    def from_avro(cls, record: dict[str, Any]) -> FxRate:
        return cls.model_validate(record)

    def encode(self) -> bytes:
        return codec("FxRate").encode(self.to_avro())

    @classmethod
    def decode(cls, value: bytes) -> FxRate:
        return cls.from_avro(codec("FxRate").decode(value))
