"""Which budgets an event counts toward: scope filters plus every ancestor of a match."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Protocol

from spendstream.schemas.budget import BudgetDefinition


class Matchable(Protocol):
    """A usage event, or a pre-flight check request: anything with matchable fields."""

    def field(self, name: str) -> str | None: ...


#: Fields compared case-insensitively (providers and models are spelled many ways).
CASELESS = {"provider", "model", "source", "platform"}

#: Match results remembered per registry snapshot (signature -> matches); cleared when full.
CACHE_LIMIT = 100_000


@dataclass(frozen=True)
class Match:
    budget: BudgetDefinition
    via: str  # the budget whose own scope matched


def scope_matches(scope: dict[str, list[str]], event: Matchable) -> bool:
    """Every scope field must match one of its values (glob patterns allowed)."""
    for field, allowed in scope.items():
        value = event.field(field)
        if value is None:
            return False
        if field in CASELESS:
            value = value.lower()
            allowed = [a.lower() for a in allowed]
        if not any(fnmatchcase(value, pat) if "*" in pat else value == pat for pat in allowed):
            return False
    return True


class ScopeIndex:
    """Candidate budgets for an event without testing every scope.

    Each budget is filed under one exact (field, value) of its scope; an event is then
    tested only against the budgets filed under its own values, plus the few whose scope
    is empty or all glob patterns. With thousands of budgets, matching stays a handful
    of dict lookups instead of a scan."""

    def __init__(self, budgets: Iterable[BudgetDefinition]) -> None:
        self.by_value: dict[tuple[str, str], list[BudgetDefinition]] = {}
        self.scan: list[BudgetDefinition] = []
        for budget in budgets:
            anchor = next(((f, vals) for f, vals in sorted(budget.scope.items())
                           if not any("*" in v for v in vals)), None)  # fmt: skip
            if anchor is None:
                self.scan.append(budget)
                continue
            field, values = anchor
            for value in values:
                key = (field, value.lower() if field in CASELESS else value)
                self.by_value.setdefault(key, []).append(budget)
        self.fields = sorted({f for f, _ in self.by_value})

    def candidates(self, event: Matchable) -> list[BudgetDefinition]:
        found = list(self.scan)
        for field in self.fields:
            value = event.field(field)
            if value is not None:
                key = (field, value.lower() if field in CASELESS else value)
                found.extend(self.by_value.get(key, ()))
        return found


#: An event's values of the fields any scope names, normalised as matching compares them.
Signature = tuple[str | None, ...]


def signature_fields(
    budgets: Iterable[BudgetDefinition],
) -> tuple[tuple[str, bool, frozenset[str] | None], ...]:
    """(field, caseless, known values) for every field some scope names, sorted by name.

    ``known`` is the set of (normalised) values the scopes allow for the field when none of
    them is a glob pattern: any other value then matches nothing, exactly like a missing
    field, so it is folded to None and rare values (users, sessions) share one signature."""
    patterns: dict[str, set[str]] = {}
    for budget in budgets:
        for field, allowed in budget.scope.items():
            fold = field in CASELESS
            patterns.setdefault(field, set()).update(a.lower() if fold else a for a in allowed)
    return tuple(
        (field, field in CASELESS, None if any("*" in v for v in vals) else frozenset(vals))
        for field, vals in sorted(patterns.items())
    )


def ancestors_in(
    budgets: dict[str, BudgetDefinition], budget: BudgetDefinition
) -> list[BudgetDefinition]:
    chain, seen, parent_id = [], {budget.budget_id}, budget.parent_id
    while parent_id and parent_id in budgets and parent_id not in seen:
        seen.add(parent_id)
        parent = budgets[parent_id]
        chain.append(parent)
        parent_id = parent.parent_id
    return chain


class Snapshot:
    """One immutable state of the registry: its budgets, their index, and a result cache.

    A new snapshot is built on every put/delete, so cached results never outlive the
    budgets they were computed from. Only ``cache`` and ``shared`` are mutated after
    construction; racing readers may both fill or clear them, which at worst recomputes a
    result (each value is a function of its key within the snapshot)."""

    __slots__ = ("budgets", "index", "signature", "cache", "shared")

    def __init__(self, budgets: dict[str, BudgetDefinition]) -> None:
        self.budgets = budgets
        self.index = ScopeIndex(budgets.values())
        self.signature = signature_fields(budgets.values())
        self.cache: dict[Signature, tuple[Match, ...]] = {}
        self.shared: dict[tuple[str, str], Match] = {}  # one Match per (budget, via) cached

    def key(self, event: Matchable) -> Signature:
        """Everything ``match`` reads from the event: equal keys, equal results."""
        field = event.field
        values: list[str | None] = []
        for name, caseless, known in self.signature:
            value = field(name)
            if value is not None:
                if caseless:
                    value = value.lower()
                if known is not None and value not in known:
                    value = None
            values.append(value)
        return tuple(values)

    def match(self, event: Matchable) -> list[Match]:
        result: dict[str, Match] = {}
        for budget in self.index.candidates(event):
            if scope_matches(budget.scope, event):
                result.setdefault(budget.budget_id, Match(budget, budget.budget_id))
        for direct in list(result.values()):
            for ancestor in ancestors_in(self.budgets, direct.budget):
                result.setdefault(ancestor.budget_id, Match(ancestor, direct.budget.budget_id))
        return sorted(result.values(), key=lambda m: m.budget.budget_id)


class BudgetRegistry:
    """Thread-safe set of live budget definitions (fed from the compacted budgets topic)."""

    def __init__(self, budgets: Iterable[BudgetDefinition] = ()) -> None:
        self._lock = threading.Lock()
        self._snapshot = Snapshot({b.budget_id: b for b in budgets})

    def put(self, budget: BudgetDefinition) -> None:
        self.apply({budget.budget_id: budget})

    def delete(self, budget_id: str) -> None:
        self.apply({budget_id: None})

    def apply(self, changes: dict[str, BudgetDefinition | None]) -> None:
        """Put (a definition) or delete (None) many budgets as one new snapshot: a snapshot
        indexes every budget, so a feed reading 1,000 definitions one put at a time built
        1,000 snapshots (quadratic: a worker's start took seconds of CPU, measured)."""
        if not changes:
            return
        with self._lock:
            budgets = dict(self._snapshot.budgets)
            for budget_id, budget in changes.items():
                if budget is None:
                    budgets.pop(budget_id, None)
                else:
                    budgets[budget_id] = budget
            self._snapshot = Snapshot(budgets)

    def get(self, budget_id: str) -> BudgetDefinition | None:
        return self._snapshot.budgets.get(budget_id)

    def all(self) -> list[BudgetDefinition]:
        return list(self._snapshot.budgets.values())

    def __len__(self) -> int:
        return len(self._snapshot.budgets)

    def ancestors(self, budget: BudgetDefinition) -> list[BudgetDefinition]:
        return ancestors_in(self._snapshot.budgets, budget)

    def match(self, event: Matchable) -> list[Match]:
        """One Match per budget the event counts toward; ancestors included once each.

        Remembered per signature (the event's values of the fields scopes name), so a
        repeated team/project/provider/model combination costs a few dict lookups."""
        snapshot = self._snapshot  # replaced, never mutated (except its cache)
        key = snapshot.key(event)
        cache = snapshot.cache
        found = cache.get(key)
        if found is None:
            shared = snapshot.shared
            found = tuple(
                shared.setdefault((m.budget.budget_id, m.via), m) for m in snapshot.match(event)
            )
            if len(cache) >= CACHE_LIMIT:
                cache.clear()
            cache[key] = found
        return list(found)

    def match_uncached(self, event: Matchable) -> list[Match]:
        """``match`` computed from the scopes every time (the reference the cache must equal)."""
        return self._snapshot.match(event)
