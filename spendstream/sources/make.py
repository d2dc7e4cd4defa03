"""Make scenario executions, billed per operation."""

from __future__ import annotations

from spendstream.builders import from_make_execution

from .workflow import engine

KIND = engine(
    "make",
    from_make_execution,
    lambda d: "scenarioId" in d or "scenario_id" in d,
    label="a Make execution",
    order=50,
)
