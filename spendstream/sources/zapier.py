"""Zapier task-history records, billed per task."""

from __future__ import annotations

from spendstream.builders import from_zapier_task_usage

from .workflow import engine

KIND = engine(
    "zapier",
    from_zapier_task_usage,
    lambda d: "zap_id" in d or "zap" in d,
    label="a Zapier task record",
    order=40,
)
