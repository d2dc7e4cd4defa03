"""n8n executions, billed per workflow execution."""

from __future__ import annotations

from spendstream.builders import from_n8n_execution

from .workflow import engine

KIND = engine(
    "n8n",
    from_n8n_execution,
    lambda d: "workflowId" in d and ("stoppedAt" in d or "finished" in d),
    label="an n8n execution",
    order=30,
)
