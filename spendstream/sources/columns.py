"""The priced_usage columns of an event's payload, as its source kind declares them
(``SourceKind.columns``): one rule for the sink's decoded rows (sinks/rows.py) and for the
price stage's ``priced/2`` records, which ClickHouse reads without decoding (price_stage.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .registry import SUBKIND_FIELDS, SourceError, SourceKind, sources

#: The priced_usage columns a source kind fills, in table order, with what a row of
#: another kind gets there.
PAYLOAD_DEFAULTS: dict[str, Any] = {
    "provider": "", "model": "", "operation": "",
    "input_tokens": 0, "output_tokens": 0, "cache_read_tokens": 0, "cache_write_tokens": 0,
    "reasoning_tokens": 0, "images": 0, "cache_write_1h_tokens": 0, "service_tier": "",
    "batch": 0, "actor_id": "", "run_id": "", "platform": "", "workflow_id": "",
    "execution_id": "", "status": "", "compute_units": 0, "results": 0, "tasks": 0,
    "operations": 0, "duration_ms": 0, "category": "",
}  # fmt: skip
PAYLOAD_COLUMNS = tuple(PAYLOAD_DEFAULTS)
#: provider, model and operation come before the attribute columns, the rest after them
_HEAD = PAYLOAD_COLUMNS.index("input_tokens")

#: (the payload columns before the attributes, those after them)
Filler = Callable[[dict[str, Any]], tuple[tuple[Any, ...], tuple[Any, ...]]]


def payload_filler(kind: SourceKind) -> Filler:
    """A function from a decoded payload to its priced_usage payload columns (in table
    order, split around the attribute columns), compiled once per kind from its
    ``columns`` declaration into one expression: it runs for every priced event."""
    unknown = sorted(set(kind.columns) - set(PAYLOAD_DEFAULTS))
    if unknown:
        raise SourceError(
            f"source kind '{kind.name}' fills {unknown}, not payload columns of priced_usage "
            f"(a new column needs a migration and an entry in PAYLOAD_DEFAULTS)"
        )
    env: dict[str, Any] = {}
    parts = []
    for i, column in enumerate(PAYLOAD_COLUMNS):
        how = kind.columns.get(column)
        if how is None:
            env[f"d{i}"] = PAYLOAD_DEFAULTS[column]
            parts.append(f"d{i}")
        elif isinstance(how, str):
            parts.append(f"p[{how!r}]")
        else:
            env[f"f{i}"] = how
            parts.append(f"f{i}(p)")
    head, tail = ", ".join(parts[:_HEAD]), ", ".join(parts[_HEAD:])
    fill: Filler = eval(f"lambda p: (({head},), ({tail},))", env)  # noqa: S307 (our names only)
    return fill


class _Fillers:
    """Payload fillers by kind name (an engine by its ``platform``), compiled on first
    use and dropped when the registry changes."""

    def __init__(self) -> None:
        self.by_name: dict[str, Filler] = {}
        self.version = -1

    def get(self, source: str, payload: dict[str, Any]) -> Filler:
        registry = sources()
        if registry.version != self.version:
            self.by_name, self.version = {}, registry.version
        sub = SUBKIND_FIELDS.get(source)
        name = payload[sub] if sub else source
        found = self.by_name.get(name)
        if found is None:
            # An engine this process does not know (registered only where the event was
            # priced) gets its wire kind's columns: the row is stored, not dead-lettered.
            kind = registry.of_payload(source, payload) or registry.sub_kinds(source)[0]
            found = self.by_name[name] = payload_filler(kind)
        return found


_FILLERS = _Fillers()


def payload_columns(source: str, payload: dict[str, Any]) -> tuple[tuple[Any, ...], ...]:
    """(columns before the attributes, columns after them) of one event's payload."""
    return _FILLERS.get(source, payload)(payload)
