"""Budget definitions: the contract on the compacted ``budgets`` topic and in YAML files."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from spendstream.errors import UserError

from .avro import codec
from .models import AwareDatetime, Currency, Money, Strict, Threshold, explain
from .money import plain

Period = Literal["daily", "weekly", "monthly", "quarterly", "annual", "custom"]
#: Fields a scope may filter on; anything else is treated as a free tag name.
SCOPE_FIELDS = (
    "org",
    "team",
    "project",
    "user",
    "department",
    "session",
    "feature",
    "source",
    "provider",
    "model",
    "platform",
    "actor_id",
    "category",
    "operation",
)
DEFAULT_TIERS = (Decimal(50), Decimal(75), Decimal(90), Decimal(100))


class BudgetError(UserError, ValueError):
    """A budget definition that cannot be accepted, with the reason."""


#: Safe budget ids: letters, digits, ``.``, ``_`` and ``-``, starting with a letter or digit.
#: Alert ids are ``budget:period:kind[:tier]`` and are split on ``:``; ids end up in URL
#: paths (``/budgets/ID``), so ``:``, ``/``, ``.`` and ``..`` are refused.
BUDGET_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


class BudgetDefinition(Strict):
    budget_id: str
    name: Annotated[str, Field(min_length=1, max_length=256)]
    parent_id: str | None = None
    limit: Money
    currency: Currency = "USD"
    period: Period = "monthly"
    timezone: str = "UTC"
    custom_start: AwareDatetime | None = None
    custom_end: AwareDatetime | None = None
    scope: dict[str, list[str]] = Field(default_factory=dict)
    thresholds: list[Threshold] = Field(
        default_factory=lambda: [Threshold(percent=p) for p in DEFAULT_TIERS]
    )
    allocations: dict[str, Money] = Field(default_factory=dict)
    owner: str | None = None
    updated_at: AwareDatetime = Field(default_factory=lambda: datetime.now(UTC))
    #: who wrote this version and why (v2; None in versions written before): set by the
    #: CLI (``--actor``, default the OS user) and the API (the token's name), never by a file
    actor: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    note: Annotated[str, Field(max_length=2000)] | None = None

    @field_validator("budget_id")
    @classmethod
    def _safe_id(cls, value: str) -> str:
        if not re.fullmatch(BUDGET_ID_PATTERN, value):
            raise ValueError(
                f"'{value}' is not a valid budget id: use 1-128 letters, digits, '.', '_' "
                "or '-', starting with a letter or digit"
            )
        return value

    @field_validator("note")
    @classmethod
    def _blank_note(cls, value: str | None) -> str | None:
        return value or None  # an empty --note or "note": "" is no note

    @field_validator("timezone")
    @classmethod
    def _valid_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"'{value}' is not an IANA time zone (e.g. Europe/Berlin)") from None
        return value

    @field_validator("scope", mode="before")
    @classmethod
    def _listify(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: v if isinstance(v, list) else [v] for k, v in value.items()}
        return value

    @field_validator("scope")
    @classmethod
    def _valid_scope(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for key, allowed in value.items():
            if not key or not allowed:
                raise ValueError(f"scope '{key}' needs at least one value")
        return {k: [str(v) for v in vals] for k, vals in value.items()}

    @model_validator(mode="after")
    def _consistent(self) -> BudgetDefinition:
        if self.limit <= 0:
            raise ValueError("limit must be greater than zero")
        percents = [t.percent for t in self.thresholds]
        if percents != sorted(percents) or len(set(percents)) != len(percents):
            raise ValueError(f"thresholds must be strictly ascending, got {percents}")
        if self.period == "custom":
            if not (self.custom_start and self.custom_end):
                raise ValueError("period 'custom' needs custom_start and custom_end")
            if self.custom_end <= self.custom_start:
                raise ValueError("custom_end must be after custom_start")
        if self.allocations and sum(self.allocations.values()) > self.limit:
            raise ValueError(
                f"allocations sum to {sum(self.allocations.values())}, more than the limit "
                f"{self.limit}"
            )
        if self.parent_id == self.budget_id:
            raise ValueError("a budget cannot be its own parent")
        return self

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    # --- Avro -----------------------------------------------------------------------------
    def to_avro(self) -> dict[str, Any]:
        return self.model_dump()

    @classmethod
    def from_avro(cls, record: dict[str, Any]) -> BudgetDefinition:
        return cls.model_validate(record)

    def encode(self) -> bytes:
        return codec("BudgetDefinition").encode(self.to_avro())

    @classmethod
    def decode(cls, data: bytes) -> BudgetDefinition:
        return cls.from_avro(codec("BudgetDefinition").decode(data))


def validate_hierarchy(budgets: dict[str, BudgetDefinition]) -> None:
    """Parents exist, no cycles, a child promises no more than its parent (same period/currency)."""
    for budget in budgets.values():
        seen = {budget.budget_id}
        parent_id = budget.parent_id
        while parent_id:
            if parent_id not in budgets:
                raise BudgetError(f"budget '{budget.budget_id}': parent '{parent_id}' is unknown")
            if parent_id in seen:
                raise BudgetError(f"budget '{budget.budget_id}': parent chain has a cycle")
            seen.add(parent_id)
            parent_id = budgets[parent_id].parent_id
        if budget.parent_id:
            parent = budgets[budget.parent_id]
            if parent.currency != budget.currency:
                raise BudgetError(
                    f"budget '{budget.budget_id}' is in {budget.currency} but its parent "
                    f"'{parent.budget_id}' is in {parent.currency}"
                )
            if parent.period == budget.period and budget.limit > parent.limit:
                raise BudgetError(
                    f"budget '{budget.budget_id}' limit {plain(budget.limit)} exceeds its parent "
                    f"'{parent.budget_id}' limit {plain(parent.limit)}"
                )


def load_budgets_file(
    path: Path, known: dict[str, BudgetDefinition] | None = None, *, hierarchy: bool = True
) -> list[BudgetDefinition]:
    """Read budgets from YAML or JSON (a list, or a mapping with a ``budgets`` list).

    The hierarchy is checked together with ``known`` (the live budgets), so a file may
    name a parent defined earlier and a child still may not promise more than it."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise BudgetError(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise BudgetError(
            f"{path} is not valid {path.suffix.lstrip('.') or 'YAML'}: {exc}"
        ) from None
    items = data.get("budgets") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise BudgetError(f"{path}: expected a list of budgets or a mapping with 'budgets:'")
    budgets: list[BudgetDefinition] = []
    for index, item in enumerate(items):
        if isinstance(item, dict) and "actor" in item:
            ident = item.get("budget_id", f"#{index + 1}")
            raise BudgetError(f"{path}: budget {ident}: 'actor' is not part of a budget file: "
                              "it is who applies it (`budgets apply --actor NAME`)")  # fmt: skip
        try:
            budgets.append(BudgetDefinition.model_validate(item))
        except ValidationError as exc:
            ident = item.get("budget_id", f"#{index + 1}") if isinstance(item, dict) else index + 1
            raise BudgetError(f"{path}: budget {ident}: {explain(exc, '')}") from None
    ids = [b.budget_id for b in budgets]
    dupes = {i for i in ids if ids.count(i) > 1}
    if dupes:
        raise BudgetError(f"{path}: duplicate budget_id {sorted(dupes)}")
    if hierarchy:
        validate_hierarchy({**(known or {}), **{b.budget_id: b for b in budgets}})
    return budgets
