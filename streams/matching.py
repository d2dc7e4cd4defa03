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


class BudgetRegistry:
    """Thread-safe set of live budget definitions (fed from the compacted budgets topic)."""

    def __init__(self, budgets: Iterable[BudgetDefinition] = ()) -> None:
        self._lock = threading.Lock()
        self._budgets: dict[str, BudgetDefinition] = {b.budget_id: b for b in budgets}
        self._index = ScopeIndex(self._budgets.values())

    def put(self, budget: BudgetDefinition) -> None:
        with self._lock:
            budgets = {**self._budgets, budget.budget_id: budget}
            self._budgets, self._index = budgets, ScopeIndex(budgets.values())

    def delete(self, budget_id: str) -> None:
        with self._lock:
            budgets = {k: v for k, v in self._budgets.items() if k != budget_id}
            self._budgets, self._index = budgets, ScopeIndex(budgets.values())

    def get(self, budget_id: str) -> BudgetDefinition | None:
        return self._budgets.get(budget_id)

    def all(self) -> list[BudgetDefinition]:
        return list(self._budgets.values())

    def __len__(self) -> int:
        return len(self._budgets)

    def ancestors(self, budget: BudgetDefinition) -> list[BudgetDefinition]:
        budgets = self._budgets
        chain, seen, parent_id = [], {budget.budget_id}, budget.parent_id
        while parent_id and parent_id in budgets and parent_id not in seen:
            seen.add(parent_id)
            parent = budgets[parent_id]
            chain.append(parent)
            parent_id = parent.parent_id
        return chain

    def match(self, event: Matchable) -> list[Match]:
        """One Match per budget the event counts toward; ancestors included once each."""
        index = self._index  # snapshot: replaced, never mutated
        result: dict[str, Match] = {}
        for budget in index.candidates(event):
            if scope_matches(budget.scope, event):
                result.setdefault(budget.budget_id, Match(budget, budget.budget_id))
        for direct in list(result.values()):
            for ancestor in self.ancestors(direct.budget):
                result.setdefault(ancestor.budget_id, Match(ancestor, direct.budget.budget_id))
        return sorted(result.values(), key=lambda m: m.budget.budget_id)
