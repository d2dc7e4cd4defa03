"""Exact pricing of usage events.

LLM calls: our override catalog first (negotiated prices, models the library lacks,
per-image prices), then genai-prices' bundled data (never fetched at run time).
Apify runs and workflow executions: the versioned catalog file. Every result names
its price source and version.

How a call was billed matters as much as its token counts (see ``Billing``): a batch
call is priced at the provider's batch rates, a service tier at that tier's rates, and
1-hour cache writes at their own rate. Rates come from genai-prices' data (its price
variants ``processing: batch`` and ``service_tier: ...``, its ``cache_write_1h_mtok``)
and, where it has none, from the ``billing`` rules of our catalog; never from a constant
in code. A tier nobody has rates for is priced at the standard rates and flagged.

Each cost line is rounded once to nano-units and the total is the sum of the rounded
lines, so a breakdown always adds up exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from copy import copy
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from fnmatch import fnmatchcase
from importlib import metadata, resources
from pathlib import Path
from typing import Any

import yaml

from spendstream.errors import UserError
from spendstream.schemas.models import (
    ApifyRun,
    CostComponent,
    CustomCost,
    LlmUsage,
    UsageEvent,
    WorkflowRun,
)
from spendstream.schemas.money import money

MTOK = Decimal(1_000_000)


class PricingError(UserError, ValueError):
    """The event cannot be priced; ``code`` is machine-readable, the message is for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Cost:
    total: Decimal
    currency: str
    components: list[CostComponent]
    source: str
    version: str
    priced: bool = True
    #: why standard rates were used for a call billed otherwise (Billing.flag), else None
    flag: str | None = None


#: a tier rule: a multiple of the standard prices, explicit prices (``*_mtok`` keys),
#: or one of the words "standard" (no change) and "batch" (the batch rates)
TierRule = Decimal | dict[str, Decimal] | str
BATCH_CONTEXT = ("processing", "batch")


@dataclass(frozen=True)
class BillingRule:
    """Catalog rule: how ``provider`` (and models matching the glob ``model``) bills what
    genai-prices' data has no rates for. ``cache_write_1h`` and ``batch`` are multiples
    (of the base input price, of every standard price); None means "no rule here"."""

    provider: str
    model: str = "*"
    cache_write_1h: Decimal | None = None
    batch: Decimal | None = None
    tiers: Mapping[str, TierRule] = field(default_factory=dict)

    def matches(self, provider: str, model: str) -> bool:
        return self.provider == provider and fnmatchcase(model, self.model)


@dataclass(frozen=True)
class Billing:
    """How one call is priced beyond its counts, resolved once per (provider, model,
    batch, tier): the genai-prices price context, then our catalog's adjustments."""

    #: genai-prices price context (its price variants), e.g. (("processing", "batch"),)
    context: tuple[tuple[str, str], ...] = ()
    #: multiple of every price (a catalog batch or tier rule)
    scale: Decimal | None = None
    #: explicit prices replacing the standard ones (a catalog tier rule)
    rates: tuple[tuple[str, Decimal], ...] = ()
    #: 1-hour cache writes at this multiple of the input price where the data has no rate
    cache_write_1h: Decimal | None = None
    #: why standard rates were used: "unknown_tier:<tier>" or "no_batch_rate"
    flag: str | None = None

    @property
    def suffix(self) -> str:
        """Appended to ``price_source`` so a flagged price says so where it is stored."""
        return f"+{self.flag}" if self.flag else ""


def _scaled(price: Any, factor: Decimal) -> Any:
    """A genai-prices price (Decimal or TieredPrices) times ``factor``, exactly."""
    from genai_prices import types as gt

    if isinstance(price, gt.TieredPrices):
        tiers = [gt.Tier(start=t.start, price=t.price * factor) for t in price.tiers]
        return gt.TieredPrices(base=price.base * factor, tiers=tiers)
    return price * factor


def adjust_prices(prices: Any, billing: Billing) -> Any:
    """A genai-prices ModelPrice with our catalog's batch/tier/1-hour-cache rules applied
    (the same object when there is nothing to apply). Shared with the compiled pricer so
    both price from the very same numbers."""
    if billing.scale is None and not billing.rates and billing.cache_write_1h is None:
        return prices
    out = copy(prices)
    if billing.scale is not None:
        for key, value in vars(prices).items():
            if value is not None:
                setattr(out, key, _scaled(value, billing.scale))
    for key, value in billing.rates:
        setattr(out, key, value)
    if (
        billing.cache_write_1h is not None
        and getattr(out, "cache_write_1h_mtok", None) is None
        and getattr(out, "input_mtok", None) is not None
    ):
        out.cache_write_1h_mtok = _scaled(out.input_mtok, billing.cache_write_1h)
    return out


@dataclass
class Catalog:
    """Our price catalog (YAML): LLM overrides, Apify and workflow prices, by version."""

    version: str
    currency: str = "USD"
    llm: dict[tuple[str, str], dict[str, Decimal]] = field(default_factory=dict)
    apify_plans: dict[str, dict[str, Decimal]] = field(default_factory=dict)
    apify_actors: dict[str, dict[str, Any]] = field(default_factory=dict)
    workflow: dict[str, dict[str, dict[str, Decimal]]] = field(default_factory=dict)
    siblings: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    billing: list[BillingRule] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path | None = None) -> Catalog:
        if path is None:
            text = (resources.files("spendstream") / "data" / "prices.yaml").read_text()
            origin = "bundled prices.yaml"
        else:
            try:
                text = path.read_text()
            except OSError as exc:
                raise PricingError("catalog", f"cannot read price catalog {path}: {exc}") from None
            origin = str(path)
        try:
            raw = yaml.safe_load(text) or {}
            return cls._parse(raw)
        except (yaml.YAMLError, KeyError, TypeError, ValueError, ArithmeticError) as exc:
            raise PricingError("catalog", f"invalid price catalog {origin}: {exc}") from None

    @classmethod
    def for_settings(cls, override: Path | None) -> Catalog:
        """The bundled catalog, with the user's catalog file (if any) layered on top."""
        bundled = cls.load()
        return bundled.merged(cls.load(override)) if override else bundled

    def merged(self, top: Catalog) -> Catalog:
        """Entries of ``top`` win; the version names both so priced events show the source."""
        if top.currency != self.currency:
            raise PricingError(
                "catalog", f"override catalog is in {top.currency}, bundled in {self.currency}"
            )
        actors = dict(self.apify_actors)
        actors.update(top.apify_actors)
        workflow = {k: dict(v) for k, v in self.workflow.items()}
        for platform, plans in top.workflow.items():
            workflow.setdefault(platform, {}).update(plans)
        return Catalog(
            version=f"{self.version}+{top.version}",
            currency=self.currency,
            llm={**self.llm, **top.llm},
            apify_plans={**self.apify_plans, **top.apify_plans},
            apify_actors=actors,
            workflow=workflow,
            siblings={**self.siblings, **top.siblings},
            billing=[*top.billing, *self.billing],  # the first matching rule wins
        )

    # --- billing modes ------------------------------------------------------------------
    def _rule_value(self, provider: str, model: str, attr: str) -> Any:
        for rule in self.billing:
            if rule.matches(provider, model):
                value = getattr(rule, attr)
                if value is not None:
                    return value
        return None

    def _tier_rule(self, provider: str, model: str, tier: str) -> TierRule | None:
        for rule in self.billing:
            if rule.matches(provider, model) and tier in rule.tiers:
                return rule.tiers[tier]
        return None

    def billing_for(
        self,
        provider: str,
        model: str,
        batch: bool,
        tier: str | None,
        variants: frozenset[tuple[str, str]] = frozenset(),
    ) -> Billing:
        """How a call is priced: ``variants`` are the (key, value) price contexts the
        price data has for the model; what it lacks, our rules supply; a tier nobody
        has rates for (or a batch call without batch rates) gets standard rates and a
        flag. A batch call is priced at batch rates whatever tier it reports."""
        provider, model = provider.lower(), model.lower()
        name = tier.strip().lower() if tier else None
        context: tuple[tuple[str, str], ...] = ()
        scale: Decimal | None = None
        rates: tuple[tuple[str, Decimal], ...] = ()
        flag: str | None = None
        if not batch and name:
            if ("service_tier", name) in variants:
                context = (("service_tier", name),)
            else:
                rule = self._tier_rule(provider, model, name)
                if rule == "batch":
                    batch = True
                elif isinstance(rule, Decimal):
                    scale = rule
                elif isinstance(rule, dict):
                    rates = tuple(sorted(rule.items()))
                elif rule != "standard":
                    flag = f"unknown_tier:{name}"
        if batch:
            if BATCH_CONTEXT in variants:
                context = (BATCH_CONTEXT,)
            else:
                scale = self._rule_value(provider, model, "batch")
                if scale is None:
                    flag = "no_batch_rate"
        return Billing(
            context, scale, rates, self._rule_value(provider, model, "cache_write_1h"), flag
        )

    @classmethod
    def _parse(cls, raw: dict[str, Any]) -> Catalog:
        def dec(mapping: dict[str, Any]) -> dict[str, Decimal]:
            out = {}
            for key, value in mapping.items():
                if isinstance(value, float):
                    raise ValueError(f"price '{key}' must be quoted as a string, not a float")
                out[key] = Decimal(str(value))
            return out

        llm = {}
        for entry in raw.get("llm", []):
            prices = {k: v for k, v in entry.items() if k not in ("provider", "model")}
            llm[(entry["provider"].lower(), entry["model"].lower())] = dec(prices)
        apify = raw.get("apify", {})
        workflow: dict[str, dict[str, dict[str, Decimal]]] = {}
        for platform, plans in raw.get("workflow", {}).items():
            # an engine's alias (power-automate) prices its canonical name (power_automate)
            workflow.setdefault(_engine_name(platform), {}).update(
                {plan: dec(prices) for plan, prices in plans.items()}
            )

        def pair(text: str) -> tuple[str, str]:
            provider, _, model = text.partition("/")
            if not model:
                raise ValueError(f"sibling '{text}' must be provider/model")
            return provider.lower(), model.lower()

        siblings = {pair(k): pair(v) for k, v in (raw.get("siblings") or {}).items()}

        def number(value: Any, what: str) -> Decimal:
            if isinstance(value, float):
                raise ValueError(f"{what} must be quoted as a string, not a float")
            return Decimal(str(value))

        def tier_rule(name: str, value: Any) -> TierRule:
            if value in ("standard", "batch"):
                return str(value)
            if isinstance(value, dict):
                return dec(value)
            return number(value, f"tier '{name}'")

        billing = []
        for entry in raw.get("billing") or []:
            unknown = set(entry) - {"provider", "model", "cache_write_1h", "batch", "tiers"}
            if unknown:
                raise ValueError(f"billing rule: unknown keys {sorted(unknown)}")
            billing.append(
                BillingRule(
                    provider=entry["provider"].lower(),
                    model=str(entry.get("model", "*")).lower(),
                    cache_write_1h=None
                    if entry.get("cache_write_1h") is None
                    else number(entry["cache_write_1h"], "cache_write_1h"),
                    batch=None if entry.get("batch") is None else number(entry["batch"], "batch"),
                    tiers={
                        str(k).lower(): tier_rule(str(k), v)
                        for k, v in (entry.get("tiers") or {}).items()
                    },
                )
            )
        return cls(
            billing=billing,
            siblings=siblings,
            version=str(raw["version"]),
            currency=raw.get("currency", "USD"),
            llm=llm,
            apify_plans={plan: dec(p) for plan, p in apify.get("plans", {}).items()},
            apify_actors=apify.get("actors", {}),
            workflow=workflow,
        )


def _engine_name(name: str) -> str:
    """The canonical name of a registered workflow engine; other names unchanged."""
    from spendstream.sources import sources

    kind = sources().find(name)
    return kind.name if kind is not None and kind.wire == "workflow" else name


def _line(name: str, quantity: Decimal | int, unit: str, amount: Decimal) -> CostComponent:
    return CostComponent(name=name, quantity=money(quantity), unit=unit, amount=money(amount))


def _cost(
    lines: list[CostComponent], currency: str, source: str, version: str, flag: str | None = None
) -> Cost:
    lines = [c for c in lines if c.quantity or c.amount]
    total = sum((c.amount for c in lines), Decimal(0))
    return Cost(money(total), currency, lines, source, version, flag=flag)


def variants_of(info: Any, when: datetime) -> frozenset[tuple[str, str]]:
    """The single-key price contexts genai-prices has variants for on this model at
    ``when`` (its batch and tier prices start at a date: before it, our rules apply)."""
    return frozenset(
        item
        for variant in (getattr(info, "price_variants", None) or ())
        if len(variant.when) == 1
        and (variant.constraint is None or variant.constraint.active(when))
        for item in variant.when.items()
    )


def override_prices(prices: dict[str, Decimal], billing: Billing) -> dict[str, Decimal]:
    """A catalog entry's prices under a billing mode (as ``adjust_prices`` for genai
    data): scaled for batch or a tier, explicit tier prices, the 1-hour cache-write rate."""
    out = dict(prices)
    if billing.scale is not None:
        out = {key: value * billing.scale for key, value in out.items()}
    out.update(billing.rates)
    if (
        billing.cache_write_1h is not None
        and "cache_write_1h_mtok" not in out
        and "input_mtok" in out
    ):
        out["cache_write_1h_mtok"] = out["input_mtok"] * billing.cache_write_1h
    return out


class Pricer:
    """Prices any usage event; raises PricingError for what it cannot price."""

    def __init__(self, catalog: Catalog | None = None) -> None:
        from spendstream.sources import sources

        self.catalog = catalog or Catalog.load()
        self._kinds = sources()
        self.genai_version = f"genai-prices {metadata.version('genai-prices')}"

    def price(self, event: UsageEvent) -> Cost:
        """Price with the pricer its source kind registered (spendstream/sources/): one
        dict lookup by kind name."""
        payload = event.payload
        kind = self._kinds.of_payload(event.source, payload)
        if kind is None:
            raise PricingError(
                "unknown_source", f"no source kind registered for a {event.source} payload"
            )
        cost: Cost = kind.price(self, payload, event.occurred_at)
        return cost

    def price_custom(self, cost: CustomCost) -> Cost:
        """A custom cost is what the producer says it is: one line, as reported."""
        line = _line(cost.category, 1, "amount", cost.amount)
        return _cost([line], cost.currency, "direct", "as reported")

    # --- LLM ------------------------------------------------------------------------------
    def price_llm(self, usage: LlmUsage, when: datetime | None = None) -> Cost:
        """Price one call; ``when`` (the event time) picks the price in force then, so a
        replay months later prices alike. None means now (pre-flight estimates)."""
        override = self.catalog.llm.get((usage.provider.lower(), usage.model.lower()))
        if override is not None:
            return self._price_override(usage, override)
        return self._price_genai(usage, when)

    def _price_override(self, usage: LlmUsage, prices: dict[str, Decimal]) -> Cost:
        billing = self.catalog.billing_for(
            usage.provider, usage.model, usage.batch, usage.service_tier
        )
        prices = override_prices(prices, billing)
        written_5m = usage.cache_write_tokens - usage.cache_write_1h_tokens
        uncached = usage.input_tokens - usage.cache_read_tokens - usage.cache_write_tokens
        cache_read = prices.get("cache_read_mtok", prices.get("input_mtok", Decimal(0)))
        cache_write = prices.get("cache_write_mtok", prices.get("input_mtok", Decimal(0)))
        cache_write_1h = prices.get("cache_write_1h_mtok", cache_write)
        lines = [
            _line("input", uncached, "tokens", uncached * prices.get("input_mtok", 0) / MTOK),
            _line(
                "cache_read",
                usage.cache_read_tokens,
                "tokens",
                usage.cache_read_tokens * cache_read / MTOK,
            ),
            _line("cache_write", written_5m, "tokens", written_5m * cache_write / MTOK),
            _line(
                "cache_write_1h",
                usage.cache_write_1h_tokens,
                "tokens",
                usage.cache_write_1h_tokens * cache_write_1h / MTOK,
            ),
            _line(
                "output",
                usage.output_tokens,
                "tokens",
                usage.output_tokens * prices.get("output_mtok", 0) / MTOK,
            ),
            _line("images", usage.images, "images", usage.images * prices.get("per_image", 0)),
            _line(
                "request",
                1 if "per_request" in prices else 0,
                "requests",
                prices.get("per_request", Decimal(0)),
            ),
        ]
        if usage.images and "per_image" not in prices:
            raise PricingError(
                "unknown_price", f"no per-image price for {usage.provider}/{usage.model}"
            )
        return _cost(
            lines,
            self.catalog.currency,
            f"catalog{billing.suffix}",
            f"catalog {self.catalog.version}",
            billing.flag,
        )

    def _price_genai(self, usage: LlmUsage, when: datetime | None = None) -> Cost:
        from genai_prices import Usage
        from genai_prices.data_snapshot import get_snapshot

        if usage.images:
            raise PricingError(
                "unknown_price",
                f"genai-prices has no per-image price for {usage.provider}/{usage.model}; "
                "add one to the price catalog",
            )
        gusage = Usage(
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_read_tokens=usage.cache_read_tokens or None,
            cache_write_tokens=usage.cache_write_tokens or None,
            cache_write_1h_tokens=usage.cache_write_1h_tokens or None,
            input_audio_tokens=usage.input_audio_tokens or None,
            output_audio_tokens=usage.output_audio_tokens or None,
        )
        when = when or datetime.now(UTC)
        try:
            # The library's own model lookup and price selection, then its own per-unit
            # decomposition once (its calc_price does the same decomposition to sum it).
            provider, model = get_snapshot().find_provider_model(
                usage.model, None, usage.provider, None
            )
            billing = self.catalog.billing_for(
                usage.provider,
                usage.model,
                usage.batch,
                usage.service_tier,
                variants_of(model, when),
            )
            prices = adjust_prices(model.get_prices(when, dict(billing.context)), billing)
            raw = _genai_lines(prices, gusage)
            source = provider.id
            if raw is None:
                calc = prices.calc_price(gusage)
                raw = [
                    ("input", Decimal(usage.input_tokens), "tokens", calc["input_price"]),
                    ("output", Decimal(usage.output_tokens), "tokens", calc["output_price"]),
                    (
                        "other",
                        Decimal(0),
                        "-",
                        calc["total_price"] - calc["input_price"] - calc["output_price"],
                    ),
                ]
        except LookupError as exc:
            raise PricingError(
                "unknown_model",
                f"unknown model '{usage.model}' for provider '{usage.provider}' "
                f"({exc}); add it to the price catalog",
            ) from None
        except ValueError as exc:
            raise PricingError("invalid_usage", f"usage cannot be priced: {exc}") from None
        lines = [_line(*row) for row in raw]
        return _cost(
            lines, "USD", f"genai-prices:{source}{billing.suffix}", self.genai_version, billing.flag
        )

    # --- Apify ----------------------------------------------------------------------------
    def price_apify(self, run: ApifyRun) -> Cost:
        version = f"catalog {self.catalog.version}"
        if run.usage_total_usd is not None:
            # Apify's own bill for the run is authoritative; keep its breakdown when given.
            lines = [_line(k, 1, "usd", v) for k, v in sorted(run.usage_usd.items())]
            if sum((c.amount for c in lines), Decimal(0)) != run.usage_total_usd:
                lines = [_line("usage_total", 1, "usd", run.usage_total_usd)]
            return _cost(lines, "USD", "apify:usageTotalUsd", "as reported")
        plan = run.plan or "default"
        plan_prices = self.catalog.apify_plans.get(plan)
        if plan_prices is None:
            raise PricingError("unknown_price", f"no Apify price for plan '{plan}' in the catalog")
        lines = [
            _line(
                "compute_units",
                run.compute_units,
                "CU",
                run.compute_units * plan_prices.get("compute_unit", Decimal(0)),
            )
        ]
        actor = self.catalog.apify_actors.get(run.actor_id, {})
        if "per_result" in actor:
            per = Decimal(str(actor["per_result"]))
            lines.append(_line("results", run.results, "results", run.results * per))
        for event_name, count in sorted(run.charged_event_counts.items()):
            per_event = actor.get("events", {}).get(event_name)
            if per_event is None:
                raise PricingError(
                    "unknown_price",
                    f"no price for charged event '{event_name}' of actor '{run.actor_id}'",
                )
            lines.append(
                _line(f"event:{event_name}", count, "events", count * Decimal(str(per_event)))
            )
        return _cost(lines, "USD", "catalog:apify", version)

    # --- workflow engines ---------------------------------------------------------------
    def price_workflow(self, run: WorkflowRun) -> Cost:
        plans = self.catalog.workflow.get(run.platform)
        plan = run.plan or "default"
        prices = (plans or {}).get(plan)
        if prices is None:
            raise PricingError(
                "unknown_price", f"no {run.platform} price for plan '{plan}' in the catalog"
            )
        lines = [
            _line("execution", 1, "executions", prices.get("per_execution", Decimal(0))),
            _line("tasks", run.tasks, "tasks", run.tasks * prices.get("per_task", Decimal(0))),
            _line(
                "operations",
                run.operations,
                "operations",
                run.operations * prices.get("per_operation", Decimal(0)),
            ),
        ]
        return _cost(lines, "USD", f"catalog:{run.platform}", f"catalog {self.catalog.version}")


def _genai_lines(model_price: Any, gusage: Any) -> list[tuple[str, Decimal, str, Decimal]] | None:
    """Per-unit lines from genai-prices' unit decomposition (None if its internals moved)."""
    try:
        from genai_prices import types as gt
        from genai_prices.units import _get_registry
        from genai_prices.validation import validate_priced_units

        registry = _get_registry()
        resolved = gt._collect_resolved_model_prices(model_price, registry)
        validate_priced_units(tuple(unit for unit, _ in resolved), registry)
        usage = gt.Usage.from_raw(gusage)
        counts = gt._compute_registry_priced_counts(resolved, usage)
        tiered = any(isinstance(p, gt.TieredPrices) for _, p in resolved)
        total_input = usage.input_tokens if tiered else 0
        rows = []
        for unit, price in resolved:
            count = counts.get(unit.usage_key, 0)
            amount = gt.calc_unit_price(price, count, total_input, unit.per)
            rows.append(
                (unit.usage_key.removesuffix("_tokens"), Decimal(count), unit.usage_key, amount)
            )
        return rows
    except Exception:  # private API of a pinned library; fall back to public totals
        return None
