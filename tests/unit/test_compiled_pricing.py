"""Compiled pricing equals Pricer to the nano-unit, line by line, for every model
genai-prices bundles (tiered prices too, on both sides of every tier start) and for our
catalog; what it cannot compile goes to Pricer and says so."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from spendstream.schemas.avro import codec
from spendstream.schemas.models import LlmUsage
from spendstream.schemas.money import NANO, to_nanos
from spendstream.streams.compiled_pricing import CompiledPricer, LlmPrice
from spendstream.streams.pricing import Catalog, Cost, PricingError
from tests.conftest import llm_event

IST = timezone(timedelta(hours=5, minutes=30))
KEYS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
        "input_audio_tokens", "output_audio_tokens", "images")  # fmt: skip
WHEN = datetime(2026, 11, 15, 12, 0, tzinfo=UTC)


def _refs(clause: Any) -> list[str]:
    """Strings a model's match logic accepts (for models whose id does not match)."""
    from genai_prices import types as gt

    for kind, attr in ((gt.ClauseEquals, "equals"), (gt.ClauseStartsWith, "starts_with"),
                       (gt.ClauseContains, "contains"), (gt.ClauseEndsWith, "ends_with")):  # fmt: skip
        if isinstance(clause, kind):
            return [getattr(clause, attr)]
    if isinstance(clause, gt.ClauseOr):
        return [ref for sub in clause.or_ for ref in _refs(sub)]
    return []


def _catalogue() -> list[tuple[str, str, Any]]:
    """(provider id, a model ref that resolves to it, ModelInfo) for every bundled model."""
    from genai_prices.data_snapshot import get_snapshot

    snapshot = get_snapshot()
    out = []
    for provider in snapshot.providers:
        for info in provider.models:
            for ref in (info.id, *_refs(info.match)):
                try:
                    _, found = snapshot.find_provider_model(ref, None, provider.id, None)
                except LookupError:
                    continue
                if found is info:
                    out.append((provider.id, ref, info))
                    break
            else:
                raise AssertionError(f"no model ref reaches {provider.id}/{info.id}")
    return out


CATALOGUE = _catalogue()
COMPILED = CompiledPricer()
PRICER = COMPILED.pricer
SWEEP = CompiledPricer(Catalog(version="none"))  # every bundled model priced by genai-prices


def _change_points(info: Any) -> tuple[list[datetime], list[time]]:
    from genai_prices import types as gt

    starts, times = [], []
    for price in [] if isinstance(info.prices, gt.ModelPrice) else info.prices:
        c = price.constraint
        if isinstance(c, gt.StartDateConstraint):
            starts.append(datetime.combine(c.start_date, time(0), tzinfo=UTC))
        elif isinstance(c, gt.TimeOfDateConstraint):
            times += [c.start_time, c.end_time]
    return starts, times


@st.composite
def moments(draw: st.DrawFn) -> tuple[datetime, int, int, int, date]:
    """Where in time to price: any time 2022-2027 (UTC or +05:30), or (per model) just
    around one of its start-date or time-of-day price changes."""
    anywhen = draw(st.datetimes(datetime(2022, 1, 1), datetime(2027, 12, 31),
                                timezones=st.sampled_from([UTC, IST])))  # fmt: skip
    near = draw(st.integers(-2, 2) | st.integers(-2 * 86_400 * 10**6, 2 * 86_400 * 10**6))
    day = draw(st.dates(date(2024, 1, 1), date(2027, 12, 31)))
    return anywhen, draw(st.integers(0, 2)), draw(st.integers(0, 100)), near, day


def moment_for(info: Any, spec: tuple[datetime, int, int, int, date]) -> datetime:
    anywhen, kind, pick, near, day = spec
    starts, times = _change_points(info)
    if kind == 1 and starts:
        return starts[pick % len(starts)] + timedelta(microseconds=near)
    if kind == 2 and times:
        return datetime.combine(day, times[pick % len(times)]) + timedelta(
            microseconds=near % 3 - 1
        )
    return anywhen


def _windows(info: Any) -> list[Any]:
    from genai_prices import types as gt

    return (
        [info.prices] if isinstance(info.prices, gt.ModelPrice) else [c.prices for c in info.prices]
    )


def _tier_starts(prices: Any) -> list[int]:
    """The tier starts of one genai-prices ModelPrice, read from the data."""
    from genai_prices import types as gt

    return sorted({tier.start for value in vars(prices).values()
                   if isinstance(value, gt.TieredPrices) for tier in value.tiers})  # fmt: skip


TIERED = {(provider, ref) for provider, ref, info in CATALOGUE
          if any(_tier_starts(prices) for prices in _windows(info))}  # fmt: skip
STARTS = {s for _, _, info in CATALOGUE for prices in _windows(info) for s in _tier_starts(prices)}
# Prompt sizes at, one below and one above every tier start in the bundled data.
TIER_EDGES = sorted({0, 1, 1_000_000} | {s + d for s in STARTS for d in (-1, 0, 1) if s + d >= 0})
counts = st.integers(0, 2 * 10**6) | st.sampled_from(TIER_EDGES) | st.integers(0, 10**15)


@st.composite
def usages(draw: st.DrawFn) -> dict[str, int]:
    """A call: the prompt includes cache reads/writes (and audio), output includes
    reasoning and audio; sometimes only some of them non-zero."""
    inp = draw(counts)
    cached = draw(st.just(0) | st.integers(0, inp))
    written = draw(st.just(0) | st.integers(0, inp - cached))
    audio_in = draw(st.just(0) | st.integers(0, inp - cached - written))
    out = draw(counts)
    reasoning = draw(st.just(0) | st.integers(0, out))
    audio_out = draw(st.just(0) | st.integers(0, out - reasoning))
    return {"input_tokens": inp, "output_tokens": out, "cache_read_tokens": cached,
            "cache_write_tokens": written, "input_audio_tokens": audio_in,
            "output_audio_tokens": audio_out, "reasoning_tokens": reasoning}  # fmt: skip


def _lines(cost: Cost) -> list[tuple[str, int, str, int]]:
    return [(c.name, int(c.quantity), c.unit, to_nanos(c.amount)) for c in cost.components]


def _price_both(
    pricer: CompiledPricer, provider: str, model: str, when: datetime | None, **usage: int
) -> tuple[LlmPrice | PricingError, Cost | PricingError]:
    try:
        got: LlmPrice | PricingError = pricer.price_llm(
            provider, model, when, *(usage.get(k, 0) for k in KEYS)
        )
    except PricingError as exc:
        got = exc
    try:
        expected: Cost | PricingError = pricer.pricer.price_llm(
            LlmUsage(provider=provider, model=model, **usage), when
        )
    except PricingError as exc:
        expected = exc
    return got, expected


def assert_same(got: LlmPrice | PricingError, expected: Cost | PricingError) -> None:
    if isinstance(expected, PricingError) or isinstance(got, PricingError):
        assert isinstance(got, PricingError) and isinstance(expected, PricingError), (
            got,
            expected,
        )
        assert (got.code, str(got)) == (expected.code, str(expected))
        return
    assert list(got.lines) == _lines(expected)
    assert got.total_nanos == to_nanos(expected.total) == sum(line[3] for line in got.lines)
    assert (got.currency, got.version) == (expected.currency, expected.version)
    suffix = "" if got.fallback is None else "+fallback"
    assert got.source == expected.source + suffix
    assert got.to_cost() == Cost(expected.total, expected.currency, expected.components,
                                 got.source, expected.version, flag=expected.flag)  # fmt: skip


def _exact_total(provider: str, model: str, when: datetime, prompt: int, got: LlmPrice) -> Fraction:
    """The compiled lines' amounts before rounding, from the compiled rates."""
    rates = SWEEP._models[(provider, model, False, None)].rates_at(when).for_prompt(prompt)
    rate = {name: Fraction(num, den) for name, _, _, _, num, den in rates.lines}
    return sum((quantity * rate[name] for name, quantity, _, _ in got.lines), Fraction(0))


def check_against_library(provider: str, ref: str, when: datetime, usage: dict[str, int]) -> bool:
    """Compiled lines are Pricer's lines, and the total is genai-prices' own calc_price
    total, each line rounded half-even; False if the library refuses the usage."""
    from genai_prices import Usage, calc_price

    got, expected = _price_both(SWEEP, provider, ref, when, **usage)
    assert_same(got, expected)
    try:
        library = calc_price(
            Usage(input_tokens=usage["input_tokens"], output_tokens=usage["output_tokens"],
                  **{k: usage[k] or None for k in KEYS[2:6]}),
            model_ref=ref, provider_id=provider, genai_request_timestamp=when,
        )  # fmt: skip
    except ValueError:
        assert isinstance(got, PricingError) and got.code == "invalid_usage"
        return False
    assert isinstance(got, LlmPrice)
    # Each line is rounded half-even once: at most half a nano-unit off per line ...
    assert abs(got.total - library.total_price) <= NANO / 2 * max(len(got.lines), 1)
    if got.fallback is None:  # ... and before rounding, the compiled lines are exact (the
        # library sums its lines in 28-digit Decimal: exact but for its last digit or so)
        library_nanos = Fraction(library.total_price) * 10**9
        error = abs(_exact_total(provider, ref, when, usage["input_tokens"], got) - library_nanos)
        assert error <= max(library_nanos, Fraction(1)) * len(got.lines) / 10**26
    return True


def tier_checks(info: Any, when: datetime) -> list[tuple[datetime, int]]:
    """(moment, prompt size) pairs at, one below and one above each tier start of each
    tiered price window of the model: the window in force at ``when`` and, for the
    others, a moment where the library says each is in force."""
    starts, times = _change_points(info)
    moments = [when, *starts, *(datetime.combine(date(2026, 1, 1), t) for t in times)]
    if starts:
        moments.append(min(starts) - timedelta(microseconds=1))
    seen: set[int] = set()
    checks = []
    for moment in moments:
        prices = info.get_prices(moment if moment.tzinfo else moment.replace(tzinfo=UTC))
        if id(prices) in seen:
            continue
        seen.add(id(prices))
        for start in _tier_starts(prices):
            checks += [(moment, prompt) for prompt in (start - 1, start, start + 1) if prompt >= 0]
    return checks


def with_prompt(usage: dict[str, int], prompt: int) -> dict[str, int]:
    """The usage with a prompt of ``prompt`` tokens (its parts clamped to fit)."""
    out = dict(usage, input_tokens=prompt)
    left = prompt
    for key in ("cache_read_tokens", "cache_write_tokens", "input_audio_tokens"):
        out[key] = min(out[key], left)
        left -= out[key]
    return out


FULL = {"input_tokens": 250_001, "output_tokens": 9_999, "cache_read_tokens": 100_003,
        "cache_write_tokens": 7_777, "input_audio_tokens": 1_234, "output_audio_tokens": 55,
        "reasoning_tokens": 4_000}  # fmt: skip
TEXT = {**FULL, "input_audio_tokens": 0, "output_audio_tokens": 0}


# Each example prices one random call shape on EVERY bundled model (at a time chosen per
# model, often right at one of its price changes), and on tiered models also with the
# prompt resized to one below, at and one above each tier start of each of its tiered
# price windows (the tier applies above the start). Draws are per example, not per model:
# Hypothesis draws cost milliseconds, the whole catalogue must run in seconds. No shrinking
# (each step would re-run the catalogue); the failure names model, time and usage.
@settings(max_examples=3, derandomize=True, database=None, deadline=None,
          phases=[Phase.explicit, Phase.generate],
          suppress_health_check=list(HealthCheck))  # fmt: skip
@example(usage=TEXT, spec=(WHEN, 1, 0, 0, date(2026, 1, 1)))
@example(usage=FULL, spec=(WHEN, 2, 1, 0, date(2026, 1, 1)))
@given(usage=usages(), spec=moments())
def test_every_bundled_model_prices_like_pricer_and_the_library(
    usage: dict[str, int], spec: tuple[datetime, int, int, int, date]
) -> None:
    for provider, ref, info in CATALOGUE:
        when = moment_for(info, spec)
        checks = [(when, usage)]
        if (provider, ref) in TIERED:
            checks += [(m, with_prompt(usage, p)) for m, p in tier_checks(info, when)]
        for moment, call in checks:
            try:
                check_against_library(provider, ref, moment, call)
            except AssertionError as exc:
                raise AssertionError(
                    f"{provider}/{ref} at {moment.isoformat()}, {call}: {exc}"
                ) from exc


@settings(max_examples=150, derandomize=True, database=None, deadline=None)
@given(st.sampled_from(CATALOGUE), usages(), moments())
def test_sampled_models_price_like_pricer_and_the_library(
    model: tuple[str, str, Any], usage: dict[str, int], spec: tuple[datetime, int, int, int, date]
) -> None:
    provider, ref, info = model
    check_against_library(provider, ref, moment_for(info, spec), usage)


def test_every_price_window_of_the_catalogue_compiles_tiered_ones_too() -> None:
    reasons: dict[str | None, int] = {}
    tiered = 0
    for provider, ref, _ in CATALOGUE:
        for reason in SWEEP.coverage(provider, ref):
            reasons[reason] = reasons.get(reason, 0) + 1
        entry = SWEEP._models[(provider, ref, False, None)]
        windows = [entry.single] if entry.single else [r for row in entry.table for r in row]
        tiered += len({id(r) for r in windows if r.tiers})
    assert set(reasons) == {None}
    assert len(TIERED) > 100 and tiered > 100  # 151 models, 160 windows in genai-prices 0.2.3


# --- our catalog overrides -------------------------------------------------------------
ODD = Catalog._parse({
    "version": "odd",
    "currency": "EUR",
    "llm": [
        {"provider": "p", "model": "m", "input_mtok": "3.3333", "cache_read_mtok": "0.0375",
         "cache_write_mtok": "4.17", "output_mtok": "15.01", "per_image": "0.0421",
         "per_request": "0.0000007"},
        {"provider": "p", "model": "half", "input_mtok": "0.0005", "per_request": "0.0000000005"},
        {"provider": "p", "model": "half-odd", "output_mtok": "0.0015",
         "per_request": "0.0000000015"},
        {"provider": "p", "model": "bare", "per_image": "0.040"},
        {"provider": "p", "model": "long", "input_mtok": "0.1234567890123456789012345",
         "output_mtok": "7"},
    ],
})  # fmt: skip
ODD_PRICER = CompiledPricer(ODD)
BUNDLED_OVERRIDES = sorted(Catalog.load().llm)


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(st.sampled_from(["m", "half", "half-odd", "bare", "long"]), usages(),
       st.integers(0, 60) | st.integers(0, 10**15))  # fmt: skip
def test_custom_catalog_equals_pricer(model: str, usage: dict[str, int], images: int) -> None:
    got, expected = _price_both(ODD_PRICER, "p", model, None, images=images, **usage)
    assert_same(got, expected)
    if isinstance(got, LlmPrice):
        assert got.currency == "EUR" and got.version == "catalog odd"


@settings(max_examples=200, derandomize=True, database=None, deadline=None)
@given(st.sampled_from(BUNDLED_OVERRIDES), usages(), st.integers(0, 20))
def test_bundled_catalog_entries_equal_pricer(
    entry: tuple[str, str], usage: dict[str, int], images: int
) -> None:
    provider, model = entry
    got, expected = _price_both(COMPILED, provider, model, WHEN, images=images, **usage)
    assert_same(got, expected)


def test_catalog_rounding_is_half_even_per_line() -> None:
    half = ODD_PRICER.price_llm("p", "half", None, input_tokens=1)  # 0.5 + 0.5 nano
    assert half.lines == (("input", 1, "tokens", 0), ("request", 1, "requests", 0))
    odd = ODD_PRICER.price_llm("p", "half-odd", None, output_tokens=1)  # 1.5 + 1.5 nano
    assert odd.lines == (("output", 1, "tokens", 2), ("request", 1, "requests", 2))
    assert odd.total_nanos == 4 and odd.total == Decimal("0.000000004")


def test_override_lookup_ignores_case_and_needs_a_per_image_price() -> None:
    got = COMPILED.price_llm("OpenAI", "GPT-Image-1", WHEN, 1000, 0, images=2)
    assert got.source == "catalog" and got.lines[-1] == ("images", 2, "images", 84_000_000)
    for provider, model in (("p", "half"), ("openai", "gpt-4o")):
        got_err, expected = _price_both(ODD_PRICER if provider == "p" else COMPILED,
                                        provider, model, WHEN, input_tokens=5, images=1)  # fmt: skip
        assert isinstance(got_err, PricingError) and got_err.code == "unknown_price"
        assert_same(got_err, expected)


def test_counts_beyond_exact_decimal_range_go_to_pricer() -> None:
    # A 25-digit price times a 4-digit count exceeds Decimal's 28 digits in Pricer.
    for prompt, reason in ((999, None), (1000, "out_of_range"), (123_457, "out_of_range")):
        got, expected = _price_both(ODD_PRICER, "p", "long", None, input_tokens=prompt)
        assert isinstance(got, LlmPrice) and got.fallback == reason
        assert got.source == ("catalog" if reason is None else "catalog+fallback")
        assert_same(got, expected)


# --- tiered prices -------------------------------------------------------------------------
def test_tier_applies_to_the_whole_count_once_the_prompt_exceeds_its_start() -> None:
    # claude-sonnet-4-5 per MTok: input 3 -> 6, cache write 3.75 -> 7.5, cache read
    # 0.3 -> 0.6, output 15 -> 22.5 for prompts of more than 200,000 tokens (cache
    # included); every line of the call at the tier rate, not only the tokens above it.
    pricer = CompiledPricer()
    assert pricer.coverage("anthropic", "claude-sonnet-4-5") == [None]
    expected = {
        199_999: [599_097_000, 375_000, 60_000, 7_500_000],
        200_000: [599_100_000, 375_000, 60_000, 7_500_000],
        200_001: [1_198_206_000, 750_000, 120_000, 11_250_000],
    }
    for prompt, amounts in expected.items():
        got, cost = _price_both(pricer, "anthropic", "claude-sonnet-4-5", WHEN,
                                input_tokens=prompt, cache_read_tokens=200,
                                cache_write_tokens=100, output_tokens=500)  # fmt: skip
        assert isinstance(got, LlmPrice) and got.fallback is None
        assert got.source == "genai-prices:anthropic"
        assert [line[3] for line in got.lines] == amounts
        assert [line[1] for line in got.lines] == [prompt - 300, 100, 200, 500]
        assert got.total_nanos == sum(amounts)
        assert_same(got, cost)
    assert not pricer.fallbacks


def test_two_tiers_and_half_even_rounding_of_tier_rates() -> None:
    # openrouter qwen3-coder-flash from 2026-10-19, per MTok: input 0.195 / 0.325 / 0.52,
    # cache write 0.24375 / 0.40625 / 0.65, cache read 0.039 / 0.065 / 0.104, output
    # 0.975 / 1.625 / 2.6, tiers above 32,000 and 128,000. Two cache-written tokens cost
    # 487.5 nano (-> 488) at the base rate and 812.5 (-> 812) at the first tier.
    expected = {
        32_000: [31_995 * 195, 488, 117, 975],
        32_001: [31_996 * 325, 812, 195, 1_625],
        128_000: [127_995 * 325, 812, 195, 1_625],
        128_001: [127_996 * 520, 1_300, 312, 2_600],
    }
    for prompt, amounts in expected.items():
        got, cost = _price_both(COMPILED, "openrouter", "qwen/qwen3-coder-flash", WHEN,
                                input_tokens=prompt, cache_read_tokens=3,
                                cache_write_tokens=2, output_tokens=1)  # fmt: skip
        assert isinstance(got, LlmPrice) and got.fallback is None
        assert [line[3] for line in got.lines] == amounts
        assert_same(got, cost)
    # before 2026-10-19 the model had one flat price: one rate on both sides of 32,000
    before = datetime(2026, 10, 18, 23, 59, tzinfo=UTC)
    assert COMPILED.coverage("openrouter", "qwen/qwen3-coder-flash") == [None, None]
    inputs = []
    for prompt in (32_000, 32_001):
        got, cost = _price_both(COMPILED, "openrouter", "qwen/qwen3-coder-flash", before,
                                input_tokens=prompt, output_tokens=1)  # fmt: skip
        assert isinstance(got, LlmPrice) and got.fallback is None
        assert_same(got, cost)
        inputs.append(got.lines[0][3])
    assert inputs[0] * 32_001 == inputs[1] * 32_000


def test_tier_selection_the_compiler_cannot_reproduce_stays_on_pricer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Were the library to apply a tier from its start on (>=), the rates would change
    # inside a compiled segment: the window is left to Pricer, which follows the library.
    from genai_prices import types as gt

    def at_or_above(price: Any, count: Any, total_input: Any, per: int) -> Decimal:
        if isinstance(price, gt.TieredPrices) and count is not None:
            chosen = price.base
            for tier in price.tiers:
                if total_input >= tier.start:
                    chosen = tier.price
            return chosen * count / per
        return original(price, count, total_input, per)

    original = gt.calc_unit_price
    monkeypatch.setattr(gt, "calc_unit_price", at_or_above)
    pricer = CompiledPricer()
    assert pricer.coverage("anthropic", "claude-sonnet-4-5") == ["tier_shape"]
    got, expected = _price_both(pricer, "anthropic", "claude-sonnet-4-5", WHEN,
                                input_tokens=200_000, output_tokens=10)  # fmt: skip
    assert isinstance(got, LlmPrice) and got.fallback == "tier_shape"
    assert got.source == "genai-prices:anthropic+fallback" and got.lines[0][3] == 1_200_000_000
    assert_same(got, expected)
    assert pricer.fallbacks == {"tier_shape": 1}


# --- fallback and errors -----------------------------------------------------------------


def test_compiled_result_is_not_a_fallback() -> None:
    pricer = CompiledPricer()
    got = pricer.price_llm("openai", "gpt-4o", WHEN, 1000, 500, 200)
    # gpt-4o: $2.50/M input, $1.25/M cached input, $10/M output
    assert got == LlmPrice(7_250_000, (("input", 800, "input_tokens", 2_000_000),
                                       ("cache_read", 200, "cache_read_tokens", 250_000),
                                       ("output", 500, "output_tokens", 5_000_000)),
                           "USD", "genai-prices:openai", PRICER.genai_version, None)  # fmt: skip
    assert got.total == Decimal("0.00725") and not pricer.fallbacks


@pytest.mark.parametrize("provider, model", [("openai", "no-such-model-9000"),
                                             ("no-such-provider", "gpt-4o")])  # fmt: skip
def test_unknown_model_raises_like_pricer(provider: str, model: str) -> None:
    for images in (0, 1, 0):  # the second miss is served from the cache
        got, expected = _price_both(COMPILED, provider, model, WHEN, input_tokens=5,
                                    images=images)  # fmt: skip
        assert isinstance(got, PricingError)
        assert got.code == ("unknown_price" if images else "unknown_model")
        assert_same(got, expected)


def test_usage_the_library_refuses_is_refused_alike() -> None:
    # gemini-2.5-flash prices cached audio: cache reads plus audio input need an explicit
    # cached-audio count that our events do not carry, so genai-prices refuses the call.
    got, expected = _price_both(COMPILED, "google", "gemini-2.5-flash", WHEN,
                                input_tokens=1000, cache_read_tokens=100,
                                input_audio_tokens=50)  # fmt: skip
    assert isinstance(got, PricingError) and got.code == "invalid_usage"
    assert_same(got, expected)
    ok = COMPILED.price_llm("google", "gemini-2.5-flash", WHEN, 1000, 10, 0, 0, 50)
    assert ok.fallback is None
    assert sorted(line[0] for line in ok.lines) == ["input", "input_audio", "output"]


@pytest.mark.parametrize("usage", [
    {"input_tokens": -1},
    {"input_tokens": 10, "cache_read_tokens": 8, "cache_write_tokens": 3},
    {"output_tokens": 10**15 + 1},
])  # fmt: skip
def test_invalid_usage_raises_pricing_error(usage: dict[str, int]) -> None:
    with pytest.raises(PricingError) as info:
        COMPILED.price_llm("openai", "gpt-4o-mini", WHEN, *(usage.get(k, 0) for k in KEYS))
    assert info.value.code == "invalid_usage"


@pytest.mark.parametrize("prompt, output", [(10**15, 10**15), (10**15, 10**15 - 1)])
def test_largest_valid_counts_are_priced_exactly(prompt: int, output: int) -> None:
    got, expected = _price_both(COMPILED, "openai", "gpt-4o-mini", WHEN, input_tokens=prompt,
                                output_tokens=output)  # fmt: skip
    assert isinstance(got, LlmPrice)
    # the hot path bounds counts by OR-ing them: beyond 10**15, Pricer decides
    assert got.fallback == (None if prompt | output <= 10**15 else "out_of_range")
    assert_same(got, expected)


# --- price windows -----------------------------------------------------------------------
def _start_dated_model() -> tuple[str, str, datetime]:
    """A compiled model whose price changes at its last start date."""
    for provider, ref, info in CATALOGUE:
        starts, times = _change_points(info)
        if not starts or times or not all(r is None for r in SWEEP.coverage(provider, ref)):
            continue
        start = max(starts)
        if info.get_prices(start - timedelta(microseconds=1)) != info.get_prices(start):
            return provider, ref, start
    raise AssertionError("no start-dated price change in the bundled data")


def test_price_change_at_utc_midnight_of_its_start_date() -> None:
    provider, ref, start = _start_dated_model()
    before = start - timedelta(microseconds=1)
    prices = {}
    for when in (before, start, before.astimezone(IST), start.replace(tzinfo=None)):
        got, expected = _price_both(SWEEP, provider, ref, when, input_tokens=10**6,
                                    output_tokens=10**6, cache_read_tokens=10**5)  # fmt: skip
        assert_same(got, expected)
        assert isinstance(got, LlmPrice) and got.fallback is None
        prices[when] = got.total_nanos
    assert prices[before] == prices[before.astimezone(IST)] != prices[start]
    assert prices[start] == prices[start.replace(tzinfo=None)]  # naive times are UTC


def test_time_of_day_prices() -> None:
    day = date(2026, 3, 2)
    totals: dict[str, set[int]] = {}
    for hour, minute in ((0, 29), (0, 30), (1, 0), (3, 59), (4, 0), (5, 59), (6, 0), (9, 59), (10, 0),
                         (16, 29), (16, 30), (23, 59)):  # fmt: skip
        for tz in (UTC, IST):
            when = datetime.combine(day, time(hour, minute), tzinfo=UTC).astimezone(tz)
            for model in ("deepseek-chat", "deepseek-v4-flash"):
                got, expected = _price_both(COMPILED, "deepseek", model, when,
                                            input_tokens=10**6, output_tokens=10**6)  # fmt: skip
                assert_same(got, expected)
                assert isinstance(got, LlmPrice) and got.fallback is None
                totals.setdefault(model, set()).add(got.total_nanos)
    assert all(len(seen) > 1 for seen in totals.values())  # off-peak prices applied


# --- cache and inputs ---------------------------------------------------------------------
def test_model_cache_is_bounded() -> None:
    pricer = CompiledPricer(max_models=2)
    models = ["gpt-4o", "gpt-4o-mini", "o3", "gpt-4o"]
    for model in models:
        got, expected = _price_both(pricer, "openai", model, WHEN, input_tokens=100)
        assert_same(got, expected)
        assert len(pricer._models) <= 2


def test_avro_decoded_record_prices_like_plain_values() -> None:
    event = llm_event(provider="anthropic", model="claude-haiku-4-5", input_tokens=5000,
                      cache_read_tokens=3000, cache_write_tokens=1000, output_tokens=400)  # fmt: skip
    c = codec("UsageEvent")
    record = c.decode(c.encode(event.to_avro()))
    got = COMPILED.price_payload(record["payload"], record["occurred_at"])
    assert got.fallback is None
    assert got.to_cost() == PRICER.price(event)


# --- billing modes: batch, service tiers, 1-hour cache writes ------------------------------
MODES = [(False, None), (True, None), (False, "flex"), (False, "priority"), (False, "default"),
         (False, "auto"), (False, "standard"), (False, "batch"), (False, "scale"),
         (True, "priority"), (False, "fast")]  # fmt: skip
BILLED_PROVIDERS = ("anthropic", "aws", "google", "openai")
BILLED = [(p, ref, info) for p, ref, info in CATALOGUE if p in BILLED_PROVIDERS]


@st.composite
def billed_usages(draw: st.DrawFn) -> dict[str, int]:
    """A call as ``usages`` draws it, part of its cache writes with the 1-hour lifetime."""
    usage = draw(usages())
    usage["cache_write_1h_tokens"] = draw(
        st.just(0)
        | st.just(usage["cache_write_tokens"])
        | st.integers(0, usage["cache_write_tokens"])
    )
    return usage


def _price_both_billed(
    pricer: CompiledPricer,
    provider: str,
    model: str,
    when: datetime | None,
    batch: bool,
    tier: str | None,
    usage: dict[str, int],
) -> tuple[LlmPrice | PricingError, Cost | PricingError]:
    try:
        got: LlmPrice | PricingError = pricer.price_llm(
            provider, model, when, *(usage.get(k, 0) for k in KEYS),
            cache_write_1h_tokens=usage.get("cache_write_1h_tokens", 0), service_tier=tier,
            batch=batch,
        )  # fmt: skip
    except PricingError as exc:
        got = exc
    try:
        expected: Cost | PricingError = pricer.pricer.price_llm(
            LlmUsage(provider=provider, model=model, batch=batch, service_tier=tier, **usage), when
        )
    except PricingError as exc:
        expected = exc
    return got, expected


def assert_same_billed(got: LlmPrice | PricingError, expected: Cost | PricingError) -> None:
    assert_same(got, expected)
    if isinstance(got, LlmPrice) and isinstance(expected, Cost):
        assert got.flag == expected.flag


def test_every_billed_model_in_every_billing_mode_compiles_and_prices_like_pricer() -> None:
    # one fixed call with every kind of input, on each Anthropic/Bedrock/Google/OpenAI model
    usage = {**TEXT, "cache_write_1h_tokens": 3_000}
    compiled = 0
    for provider, ref, _ in BILLED:
        for batch, tier in MODES:
            got, expected = _price_both_billed(COMPILED, provider, ref, WHEN, batch, tier, usage)
            try:
                assert_same_billed(got, expected)
            except AssertionError as exc:
                raise AssertionError(f"{provider}/{ref} batch={batch} tier={tier}: {exc}") from exc
            compiled += isinstance(got, LlmPrice) and got.fallback is None
    assert compiled > 0.9 * len(BILLED) * len(MODES)  # the hot path, not the fallback


@settings(max_examples=200, derandomize=True, database=None, deadline=None)
@given(st.sampled_from(BILLED), st.sampled_from(MODES), billed_usages(), moments())
def test_billing_modes_price_like_pricer_on_random_calls(
    model: tuple[str, str, Any],
    mode: tuple[bool, str | None],
    usage: dict[str, int],
    spec: tuple[datetime, int, int, int, date],
) -> None:
    provider, ref, info = model
    got, expected = _price_both_billed(
        COMPILED, provider, ref, moment_for(info, spec), *mode, usage
    )
    assert_same_billed(got, expected)


BILLING_ODD = Catalog._parse({
    "version": "billing-odd",
    "llm": [{"provider": "p", "model": "m", "input_mtok": "3.3333", "cache_read_mtok": "0.0375",
             "cache_write_mtok": "4.17", "output_mtok": "15.01", "per_request": "0.0000007"},
            {"provider": "q", "model": "m", "input_mtok": "1", "cache_write_1h_mtok": "2.5"}],
    "billing": [{"provider": "p", "cache_write_1h": "2", "batch": "0.45",
                 "tiers": {"priority": "1.75", "flex": "batch", "standard": "standard",
                           "custom": {"input_mtok": "9.99", "output_mtok": "0.01"}}}],
})  # fmt: skip
BILLING_ODD_PRICER = CompiledPricer(BILLING_ODD)


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(st.sampled_from(["p", "q"]),
       st.sampled_from([*MODES, (False, "custom")]), billed_usages())  # fmt: skip
def test_catalog_billing_rules_equal_pricer(
    provider: str, mode: tuple[bool, str | None], usage: dict[str, int]
) -> None:
    got, expected = _price_both_billed(BILLING_ODD_PRICER, provider, "m", None, *mode, usage)
    assert_same_billed(got, expected)


def test_catalog_billing_rules_by_hand() -> None:
    # 1M prompt tokens, 300k of them cache writes (100k with the 1-hour lifetime), 10k out
    got = BILLING_ODD_PRICER.price_llm("p", "m", None, 1_000_000, 10_000, 0, 300_000,
                                       cache_write_1h_tokens=100_000, batch=True)  # fmt: skip
    # batch at 0.45x: input 700k x 3.3333 x 0.45 = 1.0499895; 5m writes 200k x 4.17 x 0.45 =
    # 0.3753; 1h writes 100k x (2 x 3.3333 x 0.45 = 2.99997) = 0.299997; output 10k x 15.01 x
    # 0.45 = 0.067545; request 0.0000007 x 0.45 = 0.000000315
    assert [(n, q, a) for n, q, _, a in got.lines] == [
        ("input", 700_000, 1_049_989_500), ("cache_write", 200_000, 375_300_000),
        ("cache_write_1h", 100_000, 299_997_000), ("output", 10_000, 67_545_000),
        ("request", 1, 315),
    ]  # fmt: skip
    assert got.flag is None and got.source == "catalog"
    unknown = BILLING_ODD_PRICER.price_llm("q", "m", None, 1000, service_tier="gold")
    assert unknown.source == "catalog+unknown_tier:gold" and unknown.flag == "unknown_tier:gold"
    assert unknown.total_nanos == 1000 * 1000  # standard: 1000 tokens x $1/Mtok
    no_batch = BILLING_ODD_PRICER.price_llm("q", "m", None, 1000, batch=True)
    assert no_batch.flag == "no_batch_rate" and no_batch.total_nanos == 1000 * 1000
