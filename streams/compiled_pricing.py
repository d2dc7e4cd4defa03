"""LLM pricing compiled to integer nano-unit rates, for the hot path.

``Pricer.price_llm`` builds a pydantic model and runs genai-prices' per-call unit
decomposition in Decimal: hundreds of microseconds per event. Here the work is done
once per (provider, model, price window): the model is looked up with the library's
own matching rules, the prices in force are read with its ``ModelInfo.get_prices``,
and each cost line becomes "count = field - other fields" with an exact integer rate.
Pricing an event is then a dict hit and a few integer multiplications.

Tiered prices (genai-prices ``TieredPrices``: claude-sonnet-4-5, gemini-2.5-pro,
gpt-5.4, ...) are compiled too. In the library (``calc_unit_price``) the tier is chosen
by the call's whole prompt, ``input_tokens`` (cache and audio included), for every
priced unit of the window (output and cache lines too); the highest tier whose
``start`` the prompt strictly exceeds applies, else ``base``; and it applies to the
whole count of the unit, not to the part above ``start`` (a "cliff", not marginal
rates). So a window with tiered prices splits the prompt size at its distinct tier
starts s1 < s2 < ...: [0, s1], (s1, s2], ..., each segment compiled like a flat
window, with the rates the library's own ``calc_unit_price`` gives at both ends of the
segment (they must agree). Pricing picks the segment with integer comparisons.

Batch calls, service tiers and 1-hour cache writes (``pricing.Billing``) are compiled
too: a (provider, model, batch, tier) quadruple is one compiled model, its windows the
library's prices under that price context with our catalog's rules applied by the same
``pricing.adjust_prices`` Pricer uses; 1-hour cache writes are one more usage field.

The result is the same as ``Pricer.price_llm``'s to the nano-unit: same line names,
quantities and order, each line rounded half-even once, total = sum of the lines.
What the compiled form does not cover (usage the library would refuse or infer
differently, counts beyond exact Decimal range) goes to ``Pricer`` itself; such a
result says so in ``fallback`` and its ``source`` ends in ``+fallback``.

genai-prices internals relied on (the version is pinned for this reason, see
pyproject.toml): ``types._collect_resolved_model_prices`` (a window's prices as
(unit, price) pairs in the library's order), ``types._compute_registry_priced_counts``
(its unit decomposition, used at compile time only, as an oracle on probe usages) and
``units._get_registry``. ``Pricer._genai_lines`` uses the same three. Tier selection is
read through the public ``types.calc_unit_price``, also at compile time only.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal, localcontext
from fractions import Fraction
from typing import Any, NamedTuple

from pydantic import ValidationError

from spendstream.schemas.models import CostComponent, LlmUsage
from spendstream.schemas.money import SCALE, from_nanos, to_nanos

from .pricing import (
    Billing,
    Catalog,
    Cost,
    Pricer,
    PricingError,
    adjust_prices,
    override_prices,
    variants_of,
)

Line = tuple[str, int, str, int]
"""One cost line: (name, quantity, unit, amount in nano-units)."""

NANOS_PER_UNIT = 10**SCALE
MAX_COUNT = 10**15  # LlmUsage's Count bound; larger counts are refused there
DECIMAL_DIGITS = 28  # Pricer's Decimal context precision (the default context)
MAX_AMOUNT = 10 ** (DECIMAL_DIGITS - SCALE)  # money() cannot quantize a larger amount
DAY = timedelta(days=1)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Positions of the usage values in the tuple the hot path builds; ONE is the constant
# count of a per-request price.
INPUT, OUTPUT, CACHE_READ, CACHE_WRITE, INPUT_AUDIO, OUTPUT_AUDIO, CACHE_WRITE_1H, ONE, IMAGES = (
    range(9)
)
# The genai-prices usage keys Pricer reports, at the positions above.
USAGE_KEYS = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "input_audio_tokens",
    "output_audio_tokens",
    "cache_write_1h_tokens",
)
SUB_FIELDS = (CACHE_READ, CACHE_WRITE, INPUT_AUDIO, OUTPUT_AUDIO, CACHE_WRITE_1H)
#: the order ``_fallback`` receives the counts in (price_llm's parameter order)
FALLBACK_KEYS = (*USAGE_KEYS[:6], "images", "cache_write_1h_tokens")


class LlmPrice(NamedTuple):
    """A priced LLM call. ``fallback`` is None when priced by compiled rates, else why
    the full calculation was used (a metric label: price_shape, tier_shape, usage_shape,
    out_of_range)."""

    total_nanos: int
    lines: tuple[Line, ...]
    currency: str
    source: str
    version: str
    fallback: str | None = None
    #: why standard rates were used for a batch or tiered call (``Billing.flag``)
    flag: str | None = None

    @property
    def total(self) -> Decimal:
        return from_nanos(self.total_nanos)

    def components(self) -> list[CostComponent]:
        """The lines as the pydantic cost components Pricer returns (off the hot path)."""
        return [
            CostComponent(
                name=name,
                quantity=from_nanos(quantity * NANOS_PER_UNIT),
                unit=unit,
                amount=from_nanos(amount),
            )
            for name, quantity, unit, amount in self.lines
        ]

    def to_cost(self) -> Cost:
        return Cost(
            self.total,
            self.currency,
            self.components(),
            self.source,
            self.version,
            flag=self.flag,
        )


STANDARD = Billing()  # standard rates: no batch, no tier, no catalog rule
_new_price = tuple.__new__  # skips NamedTuple's Python-level __new__ (~0.3 µs a call)

# A compiled line: (name, unit, plus, minus, rate numerator, rate denominator); its
# quantity is v[plus] - sum(v[m] for m in minus), its amount in nano-units
# round_half_even(quantity * num / den).
_LineSpec = tuple[str, str, int, tuple[int, ...], int, int]


class _Rates:
    """One price window, compiled; or, with ``fallback`` set, why it cannot be.

    A window with tiered prices is its first prompt-size segment (prompts up to the
    lowest tier start), and ``tiers`` holds (start, rates) for the segments above, in
    ascending order: prompts of more than ``start`` input tokens use those rates."""

    __slots__ = ("lines", "guards", "exact_below", "fallback", "tiers", "source", "flag")

    def __init__(
        self,
        lines: tuple[_LineSpec, ...] = (),
        guards: tuple[tuple[int, int], ...] = (),
        exact_below: int = 0,
        fallback: str | None = None,
        tiers: tuple[tuple[int, _Rates], ...] = (),
    ) -> None:
        self.lines = lines
        self.guards = guards  # (a, b): both counts non-zero -> the library decides
        self.exact_below = exact_below  # counts from here on -> the library decides
        self.fallback = fallback
        self.tiers = tiers
        # price_source and billing flag of what these rates price (the billing mode can
        # change with time: genai-prices' batch and tier prices start at a date)
        self.source = ""
        self.flag: str | None = None

    def label(self, source: str, flag: str | None) -> _Rates:
        """Set source and flag here and on the tier segments above."""
        for rates in (self, *(above for _, above in self.tiers)):
            rates.source, rates.flag = source, flag
        return self

    def for_prompt(self, input_tokens: int) -> _Rates:
        """The rates for a prompt of ``input_tokens`` (the hot path inlines this)."""
        rates = self
        for start, above in self.tiers:
            if input_tokens <= start:
                break
            rates = above
        return rates


class _Model:
    """Everything about one (provider, model) string pair, resolved once."""

    __slots__ = (
        "currency",
        "source",
        "version",
        "single",
        "bounds",
        "tod",
        "table",
        "error",
        "images_error",
        "flag",
    )

    def __init__(
        self, currency: str = "USD", source: str = "", version: str = "", flag: str | None = None
    ) -> None:
        self.currency = currency
        self.source = source
        self.version = version
        self.flag = flag
        self.single: _Rates | None = None  # the only window: no time lookup needed
        self.bounds: list[datetime] = []  # UTC midnights where a start-date price begins
        self.tod: list[int] = []  # µs after UTC midnight where a time-of-day price flips
        self.table: list[list[_Rates]] = []  # [date segment][time-of-day segment]
        self.error: tuple[str, str] | None = None  # PricingError args for any call
        self.images_error: tuple[str, str] | None = None  # ... for a call with images

    def rates_at(self, when: datetime | None) -> _Rates:
        if when is None:
            when = datetime.now(UTC)
        elif when.tzinfo is None:  # genai-prices reads naive times as UTC
            when = when.replace(tzinfo=UTC)
        row = self.table[bisect_right(self.bounds, when)]
        if not self.tod:
            return row[0]
        utc = when if when.tzinfo is UTC else when.astimezone(UTC)
        micros = ((utc.hour * 60 + utc.minute) * 60 + utc.second) * 1_000_000 + utc.microsecond
        return row[bisect_right(self.tod, micros)]


class CompiledPricer:
    """Prices LLM calls from plain values with integer rates compiled per (provider,
    model, price window); anything it cannot compile exactly is priced by ``Pricer``.

    ``when`` is the event time as a datetime: fastavro decodes timestamp-micros to an
    aware datetime, and comparing it with window bounds (needed only for models whose
    prices change over time) is cheaper than converting it to integer microseconds.
    """

    def __init__(self, catalog: Catalog | None = None, *, max_models: int = 4096) -> None:
        self.pricer = Pricer(catalog)
        self.catalog = self.pricer.catalog
        self.max_models = max_models
        self.fallbacks: Counter[str] = Counter()  # priced by Pricer, by reason
        self._models: dict[tuple[str, str, bool, str | None], _Model] = {}

    # --- hot path ---------------------------------------------------------------------
    def price_llm(
        self,
        provider: str,
        model: str,
        when: datetime | None,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cache_read_tokens: int = 0,
        cache_write_tokens: int = 0,
        input_audio_tokens: int = 0,
        output_audio_tokens: int = 0,
        images: int = 0,
        cache_write_1h_tokens: int = 0,
        service_tier: str | None = None,
        batch: bool = False,
    ) -> LlmPrice:
        """Price one call. ``input_tokens`` is the whole prompt, cached tokens included;
        ``cache_write_1h_tokens`` the 1-hour part of ``cache_write_tokens``; ``when`` None
        means now. Raises PricingError as ``Pricer.price_llm`` does."""
        entry = self._models.get((provider, model, batch, service_tier))
        if entry is None:
            entry = self._compile_model(provider, model, batch, service_tier)
        if images and entry.images_error is not None:
            raise PricingError(*entry.images_error)
        rates = entry.single
        if rates is None:
            if entry.error is not None:
                raise PricingError(*entry.error)
            rates = entry.rates_at(when)
        if rates.tiers:  # tiered prices: the prompt size picks the rates (as for_prompt)
            for start, above in rates.tiers:
                if input_tokens <= start:
                    break
                rates = above
        every = (
            input_tokens
            | output_tokens
            | cache_read_tokens
            | cache_write_tokens
            | input_audio_tokens
            | output_audio_tokens
            | images
            | cache_write_1h_tokens
        )  # >= each count, negative if any is
        reason = rates.fallback
        if reason is None and (
            every < 0
            or every >= rates.exact_below
            or cache_read_tokens + cache_write_tokens > input_tokens
            or cache_write_1h_tokens > cache_write_tokens
        ):
            reason = "out_of_range"
        if reason is None:
            v = (
                input_tokens,
                output_tokens,
                cache_read_tokens,
                cache_write_tokens,
                input_audio_tokens,
                output_audio_tokens,
                cache_write_1h_tokens,
                1,
                images,
            )
            for a, b in rates.guards:
                if v[a] and v[b]:
                    reason = "usage_shape"
                    break
            else:
                total = 0
                lines = []
                for name, unit, plus, minus, num, den in rates.lines:
                    count = v[plus]
                    for m in minus:
                        count -= v[m]
                    if count:
                        if count < 0:  # the library refuses it (or Pricer explains why)
                            reason = "usage_shape"
                            break
                        if den == 1:
                            amount = count * num
                        else:
                            amount, rest = divmod(count * num, den)
                            rest += rest
                            if rest > den or (rest == den and amount & 1):
                                amount += 1
                        total += amount
                        lines.append((name, count, unit, amount))
                else:
                    return _new_price(
                        LlmPrice,
                        (
                            total,
                            tuple(lines),
                            entry.currency,
                            rates.source,
                            entry.version,
                            None,
                            rates.flag,
                        ),
                    )
        return self._fallback(
            reason or "usage_shape",
            provider,
            model,
            when,
            service_tier,
            batch,
            input_tokens,
            output_tokens,
            cache_read_tokens,
            cache_write_tokens,
            input_audio_tokens,
            output_audio_tokens,
            images,
            cache_write_1h_tokens,
        )

    def price_payload(self, payload: Mapping[str, Any], when: datetime | None) -> LlmPrice:
        """Price a fastavro-decoded LlmUsage record (a dict)."""
        get = payload.get
        return self.price_llm(
            payload["provider"],
            payload["model"],
            when,
            get("input_tokens", 0),
            get("output_tokens", 0),
            get("cache_read_tokens", 0),
            get("cache_write_tokens", 0),
            get("input_audio_tokens", 0),
            get("output_audio_tokens", 0),
            get("images", 0),
            get("cache_write_1h_tokens", 0),
            get("service_tier"),
            get("batch", False),
        )

    # --- fallback -----------------------------------------------------------------------
    def _fallback(
        self,
        reason: str,
        provider: str,
        model: str,
        when: datetime | None,
        service_tier: str | None,
        batch: bool,
        *counts: int,
    ) -> LlmPrice:
        """The exact ``Pricer`` path, validation included; counted in ``fallbacks``."""
        try:
            usage = LlmUsage(
                provider=provider,
                model=model,
                service_tier=service_tier,
                batch=batch,
                **dict(zip(FALLBACK_KEYS, counts, strict=True)),
            )
        except ValidationError as exc:
            raise PricingError("invalid_usage", f"usage cannot be priced: {exc}") from None
        cost = self.pricer.price_llm(usage, when)
        self.fallbacks[reason] += 1
        lines = tuple(
            (c.name, _whole(c.quantity), c.unit, to_nanos(c.amount)) for c in cost.components
        )
        return LlmPrice(
            to_nanos(cost.total),
            lines,
            cost.currency,
            f"{cost.source}+fallback",
            cost.version,
            reason,
            cost.flag,
        )

    # --- compilation (once per provider/model pair) ---------------------------------------
    def coverage(
        self, provider: str, model: str, batch: bool = False, service_tier: str | None = None
    ) -> list[str | None]:
        """Per price window of the model: None if compiled, else the fallback reason."""
        entry = self._models.get((provider, model, batch, service_tier)) or self._compile_model(
            provider, model, batch, service_tier
        )
        if entry.error is not None:
            raise PricingError(*entry.error)
        windows = (
            [entry.single] if entry.single is not None else [r for w in entry.table for r in w]
        )
        distinct = {id(r): r for r in windows}
        return [r.fallback for r in distinct.values()]

    def _compile_model(
        self, provider: str, model: str, batch: bool = False, tier: str | None = None
    ) -> _Model:
        models = self._models
        if len(models) >= self.max_models:
            del models[next(iter(models))]  # oldest first; a miss costs one recompile
        override = self.catalog.llm.get((provider.lower(), model.lower()))
        if override is not None:
            billing = self.catalog.billing_for(provider, model, batch, tier)
            entry = _Model(
                self.catalog.currency,
                f"catalog{billing.suffix}",
                f"catalog {self.catalog.version}",
                billing.flag,
            )
            entry.single = _compile_override(override, billing).label(entry.source, entry.flag)
            if "per_image" not in override:
                entry.images_error = (
                    "unknown_price",
                    f"no per-image price for {provider}/{model}",
                )
        else:
            entry = self._compile_genai(provider, model, batch, tier)
        models[(provider, model, batch, tier)] = entry
        return entry

    def _compile_genai(self, provider: str, model: str, batch: bool, tier: str | None) -> _Model:
        from genai_prices.data_snapshot import get_snapshot

        images_error = (
            "unknown_price",
            f"genai-prices has no per-image price for {provider}/{model}; "
            "add one to the price catalog",
        )
        try:
            found, info = get_snapshot().find_provider_model(model, None, provider, None)
        except LookupError as exc:
            entry = _Model()
            entry.error = (
                "unknown_model",
                f"unknown model '{model}' for provider '{provider}' ({exc}); "
                "add it to the price catalog",
            )
            entry.images_error = images_error
            return entry
        entry = _Model("USD", f"genai-prices:{found.id}", self.pricer.genai_version)
        entry.images_error = images_error

        def billing_at(moment: datetime) -> Billing:
            variants = variants_of(info, moment)
            return self.catalog.billing_for(provider, model, batch, tier, variants)

        try:
            _compile_windows(entry, info, billing_at)
        except Exception:  # a price shape this module does not know: the library decides
            entry.bounds, entry.tod, entry.table = [], [], []
            entry.single = _Rates(fallback="price_shape")
        return entry


def _whole(quantity: Decimal) -> int:
    """Pricer's LLM quantities are counts (tokens, images, requests)."""
    whole = int(quantity)
    if whole != quantity:
        raise PricingError("internal", f"fractional quantity {quantity} from Pricer")
    return whole


def _standard(moment: datetime) -> Billing:
    return STANDARD


def _compile_windows(
    entry: _Model, info: Any, billing_at: Callable[[datetime], Billing] = _standard
) -> None:
    """Split time where the model's price selection can change (UTC midnights of start
    dates, times of day of daily windows, of its standard prices and of its price
    variants), ask the library which prices hold in each segment under the billing mode
    in force then, and compile each distinct price set once."""
    from genai_prices import types as gt

    bounds: set[datetime] = set()
    tod: set[int] = set()
    conditional = [] if isinstance(info.prices, gt.ModelPrice) else info.prices
    for price in [*conditional, *(info.price_variants or ())]:
        constraint = price.constraint
        if constraint is None:
            continue
        if isinstance(constraint, gt.StartDateConstraint):
            bounds.add(datetime.combine(constraint.start_date, time(0), tzinfo=UTC))
        elif isinstance(constraint, gt.TimeOfDateConstraint):
            tod.update(_utc_micros(t) for t in (constraint.start_time, constraint.end_time))
        else:
            raise TypeError(f"unknown price constraint {constraint!r}")
    entry.bounds = sorted(bounds)
    entry.tod = sorted(tod - {0})
    days = [entry.bounds[0] - DAY if entry.bounds else EPOCH, *entry.bounds]
    offsets = [0, *entry.tod]
    compiled: dict[tuple[str, str | None], _Rates] = {}
    for day in days:
        row = []
        for offset in offsets:
            moment = day + timedelta(microseconds=offset)
            billing = billing_at(moment)
            prices = adjust_prices(info.get_prices(moment, dict(billing.context)), billing)
            # a price context or rule makes new objects: compare contents
            key = (repr(prices), billing.flag)
            rates = compiled.get(key)
            if rates is None:
                rates = compiled[key] = _compile_genai_prices(prices).label(
                    entry.source + billing.suffix, billing.flag
                )
            row.append(rates)
        entry.table.append(row)
    if len(days) == 1 and len(offsets) == 1:
        entry.single = entry.table[0][0]


def _utc_micros(value: time) -> int:
    """Microseconds after UTC midnight (naive times are UTC, as in genai-prices)."""
    if value.tzinfo is not None:
        value = datetime.combine(date(1970, 1, 1), value).astimezone(UTC).time()
    return ((value.hour * 60 + value.minute) * 60 + value.second) * 1_000_000 + value.microsecond


# --- one price window ---------------------------------------------------------------------
def _rate(price: Decimal, per: int) -> tuple[int, int, int]:
    """(num, den, exact_below): nano-units per counted unit as a reduced fraction, and
    the count from which Pricer's Decimal arithmetic (28 digits) is no longer exact or
    money() refuses the amount; such counts go to the fallback so results stay equal."""
    exact = Fraction(price) * NANOS_PER_UNIT / per
    digits = len(price.as_tuple().digits)
    limit = 10 ** max(DECIMAL_DIGITS - digits, 0)
    if price:
        limit = min(limit, int(MAX_AMOUNT * per / Fraction(price)))
    return exact.numerator, exact.denominator, limit


def _compile_override(entry: Mapping[str, Decimal], billing: Billing = STANDARD) -> _Rates:
    """Our catalog entry, with Pricer._price_override's lines and defaults."""
    zero = Decimal(0)
    prices = override_prices(dict(entry), billing)
    input_mtok = prices.get("input_mtok", zero)
    cache_write = prices.get("cache_write_mtok", input_mtok)
    specs: list[tuple[str, str, int, tuple[int, ...], Decimal, int]] = [
        ("input", "tokens", INPUT, (CACHE_READ, CACHE_WRITE), input_mtok, 1_000_000),
        (
            "cache_read",
            "tokens",
            CACHE_READ,
            (),
            prices.get("cache_read_mtok", input_mtok),
            1_000_000,
        ),
        ("cache_write", "tokens", CACHE_WRITE, (CACHE_WRITE_1H,), cache_write, 1_000_000),
        (
            "cache_write_1h",
            "tokens",
            CACHE_WRITE_1H,
            (),
            prices.get("cache_write_1h_mtok", cache_write),
            1_000_000,
        ),
        ("output", "tokens", OUTPUT, (), prices.get("output_mtok", zero), 1_000_000),
        ("images", "images", IMAGES, (), prices.get("per_image", zero), 1),
    ]
    if "per_request" in prices:
        specs.append(("request", "requests", ONE, (), prices["per_request"], 1))
    lines = []
    exact_below = MAX_COUNT + 1
    for name, unit, plus, minus, price, per in specs:
        num, den, limit = _rate(price, per)
        lines.append((name, unit, plus, minus, num, den))
        exact_below = min(exact_below, limit)
    return _Rates(tuple(lines), (), exact_below)


def _compile_genai_prices(prices: Any) -> _Rates:
    """Compile one genai-prices ModelPrice: which usage fields each priced unit counts
    (found by running the library's decomposition on probe usages) and its rate, per
    prompt-size segment if some prices are tiered."""
    from genai_prices import types as gt
    from genai_prices.units import _get_registry
    from genai_prices.validation import validate_priced_units

    registry = _get_registry()
    resolved = gt._collect_resolved_model_prices(prices, registry)
    try:
        validate_priced_units(tuple(unit for unit, _ in resolved), registry)
    except ValueError:  # the library refuses every call; Pricer reports why
        return _Rates(fallback="price_shape")
    shape = _probe_shape(resolved)
    if shape is None:
        return _Rates(fallback="price_shape")
    coefficients, guards = shape
    counted_prices = []  # (name, usage key, plus, minus, price, per), in the library's order
    for unit, price in resolved:
        const, *fields = coefficients[unit.usage_key]
        counted = _plus_minus(const, fields)
        if counted is None:
            return _Rates(fallback="price_shape")
        if counted == (-1, ()):
            continue  # never counted: Pricer drops the zero line
        if unit.per != 10 ** (len(str(unit.per)) - 1):
            return _Rates(fallback="price_shape")  # Decimal division would not be exact
        name = unit.usage_key.removesuffix("_tokens")
        counted_prices.append((name, unit.usage_key, counted[0], counted[1], price, unit.per))
    # Prompt-size segments: [0, s1], (s1, s2], ..., (sn, MAX_COUNT]; larger prompts are
    # refused by LlmUsage, so tiers starting there never apply to a compiled call.
    starts = sorted(
        {
            tier.start
            for *_, price, _ in counted_prices
            if isinstance(price, gt.TieredPrices)
            for tier in price.tiers
            if tier.start < MAX_COUNT
        }
    )
    segments = []
    for low, high in zip((0, *(s + 1 for s in starts)), (*starts, MAX_COUNT), strict=True):
        lines = []
        exact_below = MAX_COUNT + 1
        for name, key, plus, minus, price, per in counted_prices:
            rate = _tier_price(price, low)
            if rate is None or rate != _tier_price(price, high):
                return _Rates(fallback="tier_shape")  # not constant between tier starts
            num, den, limit = _rate(rate, per)
            lines.append((name, key, plus, minus, num, den))
            exact_below = min(exact_below, limit)
        segments.append(_Rates(tuple(lines), guards, exact_below))
    first = segments[0]
    first.tiers = tuple(zip(starts, segments[1:], strict=True))
    return first


def _tier_price(price: Any, prompt: int) -> Decimal | None:
    """The price per ``per`` units the library applies to a call whose prompt has
    ``prompt`` input tokens: its ``calc_unit_price`` for one unit, ``per`` 1, computed
    without rounding (a price with more digits than the context keeps all of them, so
    ``_rate`` sees what Pricer multiplies by). None if it is not a finite Decimal."""
    from genai_prices import types as gt

    with localcontext() as ctx:
        ctx.prec = 100
        rate = gt.calc_unit_price(price, 1, prompt, 1)
    return rate if isinstance(rate, Decimal) and rate.is_finite() else None


def _plus_minus(const: int, fields: Sequence[int]) -> tuple[int, tuple[int, ...]] | None:
    """A count as (field added, fields subtracted); (-1, ()) if always zero; None if
    the count has another form (not seen in the bundled data)."""
    plus = [i for i, c in enumerate(fields) if c == 1]
    minus = tuple(i for i, c in enumerate(fields) if c == -1)
    if len(plus) + len(minus) != sum(1 for c in fields if c):
        return None
    if const == 0 and not plus and not minus:
        return -1, ()
    if const == 1 and not plus and not minus:
        return ONE, ()
    if const == 0 and len(plus) == 1:
        return plus[0], minus
    return None


_BASE = 2**20


def _probe_shape(
    resolved: Sequence[tuple[Any, Any]],
) -> tuple[dict[str, list[int]], tuple[tuple[int, int], ...]] | None:
    """Each priced unit's count as const + sum(coefficient * usage field), and the usage
    fields that must not be non-zero together (the library refuses or infers them).

    The decomposition is linear in the usage fields, so one probe whose fields are
    distinct powers of a large base reveals every coefficient; a second probe checks.
    Probing the library, rather than re-deriving its unit rules, keeps the counts its own.
    """
    keys = [unit.usage_key for unit, _ in resolved]
    zero = _decompose(resolved, (0,) * len(USAGE_KEYS))
    if zero is None:
        return None
    guards: list[tuple[int, int]] = []

    def encoded(base: int, skip: frozenset[int] = frozenset()) -> tuple[int, ...]:
        # input and output dominate, so no count of a more specific unit exceeds them
        values = [base**6, base**5, 1, base**2, base**3, base**4, base]
        return tuple(0 if i in skip else v for i, v in enumerate(values))

    if _decompose(resolved, encoded(_BASE)) is None:  # some fields cannot be non-zero
        # together (the library refuses, or would need a count we do not have): which?
        single = [f for f in SUB_FIELDS if _decompose(resolved, _with(f)) is None]
        guards += [(f, f) for f in single]
        ok = [f for f in SUB_FIELDS if f not in single]
        guards += [
            (a, b)
            for i, a in enumerate(ok)
            for b in ok[i + 1 :]
            if _decompose(resolved, _with(a, b)) is None
        ]
    coefficients: dict[str, list[int]] = {key: [zero[key]] + [0] * len(USAGE_KEYS) for key in keys}
    # Coefficients from probes that avoid the guarded combinations.
    probes = [frozenset(f for g in guards for f in g)] if guards else [frozenset()]
    if guards:  # one sub-field at a time (1-hour cache writes with the cache writes)
        probes += [
            frozenset(f for f in SUB_FIELDS if f not in (keep, CACHE_WRITE_1H))
            if keep == CACHE_WRITE
            else frozenset(f for f in SUB_FIELDS if f not in (keep, CACHE_WRITE))
            if keep == CACHE_WRITE_1H
            else frozenset(f for f in SUB_FIELDS if f != keep)
            for keep in SUB_FIELDS
        ]
    # 1-hour cache writes are part of the cache writes: none where those are skipped
    probes = [skip | {CACHE_WRITE_1H} if CACHE_WRITE in skip else skip for skip in probes]
    for skip in probes:
        values = encoded(_BASE, skip)
        counts = _decompose(resolved, values)
        if counts is None:
            if guards:
                continue
            return None
        for key in keys:
            digits = _signed_digits(counts[key] - zero[key], _BASE)
            if digits is None:
                return None
            for field, power in enumerate(POWERS):
                if field not in skip:
                    coefficients[key][field + 1] = digits[power]
    # Check: probes with other values must agree with the coefficients.
    for skip in probes:
        check = encoded(_BASE + 7, skip)
        counts = _decompose(resolved, check)
        if counts is None:
            if guards:
                continue
            return None
        for key in keys:
            const, *fields = coefficients[key]
            if counts[key] != const + sum(c * v for c, v in zip(fields, check, strict=True)):
                return None
    return coefficients, tuple(guards)


#: the power of the probe base each usage field is encoded with (``encoded`` above)
POWERS = (6, 5, 0, 2, 3, 4, 1)


def _with(*fields: int) -> tuple[int, ...]:
    values = [_BASE**2, _BASE**2, 0, 0, 0, 0, 0]
    for field in fields:
        values[field] = 1
    if values[CACHE_WRITE_1H]:  # 1-hour writes are cache writes: all of them, here
        values[CACHE_WRITE] = 1
    return tuple(values)


def _signed_digits(value: int, base: int) -> list[int] | None:
    """Seven balanced base-``base`` digits of value, least significant first."""
    digits = []
    for _ in range(len(USAGE_KEYS)):
        digit = value % base
        if digit > base // 2:
            digit -= base
        digits.append(digit)
        value = (value - digit) // base
    return digits if value == 0 else None


def _decompose(resolved: Sequence[tuple[Any, Any]], values: Sequence[int]) -> dict[str, int] | None:
    """The library's count per priced unit for a usage Pricer would report (None where
    the library refuses it)."""
    from genai_prices import types as gt

    reported: dict[str, int | None] = {
        key: (value if i in (INPUT, OUTPUT) else value or None)
        for i, (key, value) in enumerate(zip(USAGE_KEYS, values, strict=True))
    }
    try:
        counts = gt._compute_registry_priced_counts(resolved, gt.Usage(**reported))
    except ValueError:
        return None
    out = {}
    for unit, _ in resolved:
        count = counts.get(unit.usage_key, 0)
        if not isinstance(count, int):
            return None
        out[unit.usage_key] = count
    return out
