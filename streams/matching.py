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


class BudgetRegistry:
    """Thread-safe set of live budget definitions (fed from the compacted budgets topic)."""

    def __init__(self, budgets: Iterable[BudgetDefinition] = ()) -> None:
        self._lock = threading.Lock()
        self._budgets: dict[str, BudgetDefinition] = {b.budget_id: b for b in budgets}

    def put(self, budget: BudgetDefinition) -> None:
        with self._lock:
            self._budgets = {**self._budgets, budget.budget_id: budget}

    def delete(self, budget_id: str) -> None:
        with self._lock:
            self._budgets = {k: v for k, v in self._budgets.items() if k != budget_id}

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
        budgets = self._budgets  # snapshot: replaced, never mutated
        result: dict[str, Match] = {}
        for budget in budgets.values():
            if scope_matches(budget.scope, event):
                result.setdefault(budget.budget_id, Match(budget, budget.budget_id))
        for direct in list(result.values()):
            for ancestor in self.ancestors(direct.budget):
                result.setdefault(ancestor.budget_id, Match(ancestor, direct.budget.budget_id))
        return sorted(result.values(), key=lambda m: m.budget.budget_id)
