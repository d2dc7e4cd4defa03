"""Custom costs: an amount the producer states; priced as reported (no payload format:
they arrive as usage events)."""

from __future__ import annotations

from spendstream.schemas.models import CustomCost

from .registry import SourceKind

KIND = SourceKind(
    name="custom",
    wire="custom",
    payload=CustomCost,
    price=lambda pricer, payload, when: pricer.price_custom(payload),
    columns={"category": "category"},
    dimensions={"category": "category"},
    order=90,
    label="a custom cost",
)
