"""What every workflow engine shares: the ``workflow`` wire kind, the catalog's plan
pricing (``workflow: <engine>: <plan>`` in prices.yaml) and the priced_usage columns."""

from __future__ import annotations

from spendstream.schemas.models import WorkflowRun

from .registry import Builder, Detector, PayloadFormat, SourceKind

COLUMNS = {
    "platform": "platform", "workflow_id": "workflow_id", "execution_id": "execution_id",
    "status": "status", "tasks": "tasks", "operations": "operations",
    "duration_ms": "duration_ms",
}  # fmt: skip
DIMENSIONS = {"platform": "platform", "workflow": "workflow_id"}


def engine(
    name: str,
    build: Builder,
    detect: Detector | None,
    *,
    label: str,
    aliases: tuple[str, ...] = (),
    order: int = 100,
) -> SourceKind:
    """A workflow engine's kind: runs are ``WorkflowRun`` events with ``platform=name``,
    priced per execution, task and operation at the catalog's prices for ``name``; the
    engine's one payload format is forced with ``--source name`` (or an alias)."""
    return SourceKind(
        name=name,
        wire="workflow",
        payload=WorkflowRun,
        price=lambda pricer, payload, when: pricer.price_workflow(payload),
        columns=COLUMNS,
        formats=(PayloadFormat(name, build, detect, aliases=aliases, label=label),),
        dimensions=DIMENSIONS,
        aliases=aliases,
        order=order,
        label=label,
    )
