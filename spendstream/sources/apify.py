"""Apify actor runs: priced from Apify's own ``usageTotalUsd``, else the catalog's plans."""

from __future__ import annotations

from collections.abc import Mapping

from spendstream.builders import from_apify_run
from spendstream.schemas.models import ApifyRun

from .registry import PayloadFormat, SourceKind


def _is_run(data: Mapping[str, object]) -> bool:
    inner = data.get("data")
    return "actId" in (inner if isinstance(inner, Mapping) else data)


KIND = SourceKind(
    name="apify",
    wire="apify",
    payload=ApifyRun,
    price=lambda pricer, payload, when: pricer.price_apify(payload),
    columns={
        "actor_id": "actor_id",
        "run_id": "run_id",
        "status": "status",
        "compute_units": "compute_units",
        "results": "results",
    },  # fmt: skip
    formats=(PayloadFormat("apify", from_apify_run, _is_run, label="an Apify run"),),
    dimensions={"actor": "actor_id"},
    order=20,
    label="an Apify run",
)
