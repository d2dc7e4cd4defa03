"""The registry of source kinds: the one place that says which usage sources exist.

A *source kind* is something that costs money and reports usage: LLM calls, Apify runs,
one workflow engine (n8n, Zapier, Make, Power Automate), custom costs. Each declares, in
one ``SourceKind`` (one module of this package per kind), its canonical name and aliases,
the wire kind it travels as, its payload model, the payload formats it reads (each a
``--source`` name, a builder and a detector), its pricer, the ``priced_usage`` columns it
fills and its report dimensions. The builders (``build``/``detect``), the CLI's
``--source`` help, the pricer's dispatch, the sink's row builder and the report dimensions
all read this registry instead of naming the kinds themselves.

*Wire kinds* are the branches of the Avro ``UsageEvent.payload`` union (``llm``, ``apify``,
``workflow``, ``custom``): the ``source`` field and the ``usage.<wire>`` topic. They are
fixed by the contract (a new one is a schema change). Every workflow engine travels as a
``workflow`` event whose ``platform`` field holds the engine's canonical name, so a new
engine needs no schema change.

Lookups on the hot paths (pricing a non-LLM event, building a ``priced_usage`` row) are a
dict lookup by name; nothing scans the kinds per event.
"""

from __future__ import annotations

import importlib
import pkgutil
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from importlib import metadata
from typing import Any, get_args

from spendstream.errors import UserError
from spendstream.schemas.models import Payload, Source

#: The payload union's branches, as the Avro contract fixes them: the ``source`` field.
WIRE_KINDS: tuple[str, ...] = get_args(Source)
#: Wire kinds whose payload names its source kind in a field (the others: one kind each,
#: named as the wire kind).
SUBKIND_FIELDS: Mapping[str, str] = {"workflow": "platform"}
#: Third-party packages register their kinds through this entry point group: each entry
#: point names a module that defines ``KIND`` (or a ``SourceKind`` object itself).
ENTRY_POINT_GROUP = "spendstream.sources"

#: (payload as a dict or SDK object, keyword options) -> UsageEvent
Builder = Callable[..., Any]
#: payload dict -> True when the payload is this format
Detector = Callable[[Mapping[str, Any]], bool]
#: (Pricer, payload model, event time) -> Cost
PriceFn = Callable[[Any, Any, datetime | None], Any]
#: a priced_usage column's value: the payload field of that name, or a function of the
#: decoded payload dict
Column = str | Callable[[Mapping[str, Any]], Any]


class SourceError(UserError, ValueError):
    """An unknown source name, or a kind that cannot be registered as declared."""


def _payload_models() -> dict[str, type]:
    union = get_args(Payload)[0]  # Annotated[Union[...], Field(discriminator=...)]
    return {model.model_fields["kind"].default: model for model in get_args(union)}


@dataclass(frozen=True)
class PayloadFormat:
    """One payload shape a kind reads (an API response, a run record, a results line)."""

    #: the ``--source`` name that forces this format
    name: str
    #: payload -> UsageEvent (keyword options such as ``plan`` or ``attributes`` passed on)
    build: Builder
    #: recognises the payload from fields only this format has; None: never auto-detected
    detect: Detector | None = None
    #: other ``--source`` names accepted for it
    aliases: tuple[str, ...] = ()
    #: what it is, for help texts
    label: str = ""


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: caches key on it
class SourceKind:
    """Everything the pipeline needs to know about one source kind."""

    #: canonical name: the wire kind itself, or for a workflow engine its ``platform`` value
    name: str
    #: the UsageEvent ``source`` (and topic ``usage.<wire>``) it travels as
    wire: str
    #: its payload model (the pydantic model of that wire kind)
    payload: type
    #: its pricer: (Pricer, payload, event time) -> Cost
    price: PriceFn
    #: the priced_usage columns it fills (sinks/rows.py), column -> payload field or function
    columns: Mapping[str, Column]
    #: payload formats it reads, in detection order
    formats: tuple[PayloadFormat, ...] = ()
    #: report dimensions it adds: dimension -> priced_usage column
    dimensions: Mapping[str, str] = field(default_factory=dict)
    #: other names accepted on input (CLI, an event's ``platform``, the catalog)
    aliases: tuple[str, ...] = ()
    #: detection precedence against other kinds: lower first
    order: int = 100
    #: what it is, for help texts
    label: str = ""


class SourceRegistry:
    """Source kinds by name and alias, payload formats by ``--source`` name."""

    def __init__(self) -> None:
        self._kinds: dict[str, SourceKind] = {}  # canonical name -> kind
        self._names: dict[str, SourceKind] = {}  # canonical names and aliases -> kind
        self._formats: dict[str, PayloadFormat] = {}  # format names and aliases -> format
        self._payloads = _payload_models()
        #: counts changes, so caches built from the kinds (sinks/rows.py) know when to drop
        self.version = 0

    # --- registering --------------------------------------------------------------------
    def register(self, kind: SourceKind) -> SourceKind:
        """Add a kind; refuses names already taken and kinds the wire cannot carry."""
        if kind.wire not in WIRE_KINDS:
            raise SourceError(
                f"source kind '{kind.name}': wire kind '{kind.wire}' is not a branch of the "
                f"UsageEvent payload union ({', '.join(WIRE_KINDS)}); a new one is a schema "
                "change (docs/extending.md)"
            )
        if kind.payload is not self._payloads[kind.wire]:
            raise SourceError(
                f"source kind '{kind.name}': a '{kind.wire}' event carries a "
                f"{self._payloads[kind.wire].__name__}, not a {kind.payload.__name__}"
            )
        if kind.wire not in SUBKIND_FIELDS and kind.name != kind.wire:
            raise SourceError(
                f"source kind '{kind.name}': a '{kind.wire}' event names no sub-kind, so its "
                f"kind must be named '{kind.wire}'"
            )
        names = [kind.name, *kind.aliases]
        for i, name in enumerate(names):
            if name in self._names or name in names[:i]:
                raise SourceError(f"source kind name '{name}' is taken")
        formats = [(name, fmt) for fmt in kind.formats for name in (fmt.name, *fmt.aliases)]
        for i, (name, _) in enumerate(formats):
            if name in self._formats or name == "event" or name in dict(formats[:i]):
                raise SourceError(f"payload format name '{name}' is taken")
        self._kinds[kind.name] = kind
        self._names.update(dict.fromkeys(names, kind))
        self._formats.update(formats)
        self.version += 1
        return kind

    def unregister(self, name: str) -> None:
        """Remove a kind (tests register toy kinds and take them out again)."""
        kind = self._kinds.pop(name)
        for alias in (kind.name, *kind.aliases):
            self._names.pop(alias, None)
        for fmt in kind.formats:
            for alias in (fmt.name, *fmt.aliases):
                self._formats.pop(alias, None)
        self.version += 1

    # --- lookups ------------------------------------------------------------------------
    def kinds(self) -> list[SourceKind]:
        """Every kind, in detection order."""
        return sorted(self._kinds.values(), key=lambda k: (k.order, k.name))

    def kind(self, name: str) -> SourceKind:
        """The kind called ``name`` (canonical or alias)."""
        found = self._names.get(name)
        if found is None:
            raise SourceError(f"unknown source kind '{name}'; use one of {', '.join(self._kinds)}")
        return found

    def find(self, name: str) -> SourceKind | None:
        """The kind called ``name`` (canonical or alias), None if there is none."""
        return self._names.get(name)

    def of_payload(self, wire: str, payload: Any) -> SourceKind | None:
        """The kind of a payload (a model or a decoded dict) of wire kind ``wire``: two
        dict lookups, for the hot paths."""
        sub = SUBKIND_FIELDS.get(wire)
        if sub is None:
            return self._names.get(wire)
        value = payload.get(sub) if isinstance(payload, Mapping) else getattr(payload, sub)
        return self._names.get(value) if isinstance(value, str) else None

    def sub_kinds(self, wire: str) -> list[SourceKind]:
        """The kinds travelling as ``wire`` (the workflow engines for ``workflow``)."""
        return [k for k in self.kinds() if k.wire == wire]

    def format(self, name: str) -> PayloadFormat:
        """The payload format forced by ``--source name``."""
        found = self._formats.get(name)
        if found is None:
            raise SourceError(
                f"unknown source '{name}'; use one of {', '.join(self.format_names())}"
            )
        return found

    def format_names(self) -> list[str]:
        """``event`` and every format's ``--source`` name, in detection order."""
        return ["event", *(f.name for k in self.kinds() for f in k.formats)]

    def detect(self, data: Mapping[str, Any]) -> PayloadFormat | None:
        """The first format (in detection order) that recognises ``data``."""
        for kind in self.kinds():
            for fmt in kind.formats:
                if fmt.detect is not None and fmt.detect(data):
                    return fmt
        return None

    def dimensions(self) -> dict[str, str]:
        """Report dimensions the kinds add: dimension -> priced_usage column."""
        out: dict[str, str] = {}
        for kind in self.kinds():
            out.update(kind.dimensions)
        return out


_REGISTRY = SourceRegistry()
_LOADED = False
_LOADING: int | None = None  # the thread loading the built-in kinds, while it does
_LOCK = threading.RLock()


def sources() -> SourceRegistry:
    """The process's registry, with the built-in kinds (every module of this package that
    defines ``KIND``) and those of installed plugins (entry point group
    ``spendstream.sources``) registered on first use."""
    global _LOADED, _LOADING
    if not _LOADED:
        with _LOCK:
            # a kind module that looks the registry up while it is imported gets it as
            # loaded so far, not a second load
            if not _LOADED and threading.get_ident() != _LOADING:
                _LOADING = threading.get_ident()
                try:
                    _load_builtin_and_plugins(_REGISTRY)
                    _LOADED = True
                finally:
                    _LOADING = None
    return _REGISTRY


def register(kind: SourceKind) -> SourceKind:
    """Register ``kind`` in the process's registry (see ``SourceRegistry.register``)."""
    return sources().register(kind)


def _load_builtin_and_plugins(registry: SourceRegistry) -> None:
    package = __name__.rpartition(".")[0]
    path = importlib.import_module(package).__path__
    for info in pkgutil.iter_modules(path):
        if info.name.startswith("_") or info.name == "registry":
            continue
        kind = getattr(importlib.import_module(f"{package}.{info.name}"), "KIND", None)
        if isinstance(kind, SourceKind):
            registry.register(kind)
    for point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        loaded = point.load()
        kind = getattr(loaded, "KIND", loaded)
        if not isinstance(kind, SourceKind):
            raise SourceError(
                f"entry point {point.name} = {point.value} ({ENTRY_POINT_GROUP}) is not a "
                "SourceKind nor a module defining KIND"
            )
        registry.register(kind)
