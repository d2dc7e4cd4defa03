"""Optimization recommendations from the data, each with an estimated monthly saving.

Looks at a trailing window (default 30 days) of priced usage and scales what it finds
to a 30-day month:
  * premium models where a cheaper sibling exists: the same token volume re-priced on the
    sibling (through the same Pricer, so the same price data) — the upper bound of what a
    switch would save;
  * low cache-hit ratios on models whose cached input is cheaper: what caching half of
    the uncached prompt tokens would save;
  * failed workflow executions and Apify runs: their cost, money spent for nothing;
  * repeated identical Apify runs: same actor, same result count and compute units on the
    same day — every repeat after the first (failed runs are left to the finding above).

Savings on one spend never add up past it: where a cheaper model and caching both apply
to a model's calls, the caching saving is what caching saves *after* the switch (on the
cheaper model's prices), so the two together are what doing both saves, at most the
spend. Each finding is in the currency of the spend it is about; currencies are never
added (the report's total is per currency).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from spendstream.schemas.models import LlmUsage
from spendstream.schemas.money import money
from spendstream.streams.pricing import Pricer, PricingError

from .reports import Report
from .warehouse import Warehouse

FAILED = ("failed", "error", "crashed", "canceled", "cancelled", "aborted", "timed-out",
          "timed_out", "timeout")  # fmt: skip
LOW_CACHE_RATIO = Decimal("0.2")
MIN_PROMPT_TOKENS = 100_000  # below this a caching recommendation is noise


@dataclass
class Recommendation:
    kind: str
    subject: str
    detail: str
    monthly_saving: Decimal
    currency: str


def recommend(
    w: Warehouse, pricer: Pricer, *, days: int = 30, now: datetime | None = None
) -> list[Recommendation]:
    now = now or datetime.now(UTC)
    params: dict[str, Any] = {"since": now - timedelta(days=days), "until": now}
    window = (
        "occurred_at >= {since:DateTime64(6, 'UTC')} AND occurred_at < {until:DateTime64(6, 'UTC')}"
    )
    scale = Decimal(30) / Decimal(days)
    found: list[Recommendation] = []

    # per billing mode too: a re-priced call keeps its batch rates, tier and cache lifetimes
    llm = w.query(
        "SELECT provider, model, currency, sum(cost), sum(input_tokens), sum(cache_read_tokens), "
        "sum(cache_write_tokens), sum(output_tokens), count(), batch, service_tier, "
        "sum(cache_write_1h_tokens) FROM priced_usage FINAL "
        f"WHERE source = 'llm' AND priced = 1 AND {window} "
        "GROUP BY provider, model, currency, batch, service_tier",
        params,
    )
    for (provider, model, currency, cost, inp, cached, written, out, calls, batch, tier,
         written_1h) in llm.rows:  # fmt: skip
        usage = LlmUsage(provider=provider, model=model, input_tokens=inp,
                         cache_read_tokens=cached, cache_write_tokens=written,
                         cache_write_1h_tokens=written_1h, output_tokens=out,
                         batch=bool(batch), service_tier=tier or None)  # fmt: skip
        mode = (" (batch)" if batch else "") + (f" ({tier} tier)" if tier else "")
        # what the calls would cost after the recommended switch (None: no switch)
        switched: tuple[LlmUsage, Decimal] | None = None
        sibling = pricer.catalog.siblings.get((provider.lower(), model.lower()))
        if sibling:
            other = usage.model_copy(update={"provider": sibling[0], "model": sibling[1]})
            cheaper = _price(pricer, other, currency)
            if cheaper is not None and cheaper < cost:
                switched = (other, cheaper)
                found.append(Recommendation(
                    "cheaper model", f"{provider}/{model}{mode}",
                    f"{calls} calls would cost {cheaper} instead of {cost} on {sibling[1]}; "
                    "route the easier ones there",
                    money((cost - cheaper) * scale), currency))  # fmt: skip
        uncached = inp - cached - written
        if inp >= MIN_PROMPT_TOKENS and Decimal(cached) < LOW_CACHE_RATIO * inp:
            half = uncached // 2
            # caching after the switch when there is one: the two savings never overlap
            base, base_cost = switched or (usage, _price(pricer, usage, currency))
            better = _price(pricer, base.model_copy(update={"cache_read_tokens": cached + half}),
                            currency)  # fmt: skip
            if base_cost is not None and better is not None and better < base_cost:
                ratio = (Decimal(cached) * 100 / inp).quantize(Decimal("0.1"))
                already = cost - switched[1] if switched else Decimal(0)
                saving = min(base_cost - better, cost - already)  # never past the spend
                after = f" (on {base.model}, after the switch)" if switched else ""
                found.append(Recommendation(
                    "prompt caching", f"{provider}/{model}{mode}",
                    f"cache hit ratio {ratio}% of {inp} prompt tokens; put stable prefixes "
                    f"(system prompts, tools, documents) first so they are cached{after}",
                    money(saving * scale), currency))  # fmt: skip

    failed = w.query(
        "SELECT source, if(source = 'apify', actor_id, concat(platform, ':', workflow_id)) "
        "AS subject, currency, count(), sum(cost) FROM priced_usage FINAL WHERE source IN "
        "('apify', 'workflow') AND lower(status) IN {failed:Array(String)} AND "
        f"{window} GROUP BY source, subject, currency HAVING sum(cost) > 0",
        {**params, "failed": list(FAILED)},
    )
    for source, subject, currency, runs, cost in failed.rows:
        found.append(Recommendation(
            "failed runs", subject,
            f"{runs} failed {'runs' if source == 'apify' else 'executions'} cost {cost}; fix "
            "the cause or stop retrying", money(cost * scale), currency))  # fmt: skip

    # failed runs are counted above: a repeat is a run that succeeded (or is still going)
    repeats = w.query(
        "SELECT actor_id, currency, toDate(occurred_at) AS day, results, compute_units, "
        "count() AS n, sum(cost) AS total, min(cost) AS first FROM priced_usage FINAL "
        "WHERE source = 'apify' AND lower(status) NOT IN {failed:Array(String)} AND "
        f"{window} GROUP BY actor_id, currency, day, results, compute_units HAVING n > 1",
        {**params, "failed": list(FAILED)},
    )
    by_actor: dict[tuple[str, str], list[Any]] = {}
    for actor, currency, _day, _results, _cu, n, total, first in repeats.rows:
        entry = by_actor.setdefault((actor, currency), [0, Decimal(0)])
        entry[0] += n - 1
        entry[1] += total - first
    for (actor, currency), (extra, cost) in by_actor.items():
        if cost > 0:
            found.append(Recommendation(
                "repeated runs", actor,
                f"{extra} runs repeated an identical run of the same day (same results and "
                "compute units); cache or deduplicate the input", money(cost * scale),
                currency))  # fmt: skip
    found.sort(key=lambda r: (r.currency, -r.monthly_saving, r.kind, r.subject))
    return found


def _price(pricer: Pricer, usage: LlmUsage, currency: str) -> Decimal | None:
    """The calls' cost re-priced, or None when unknown or in another currency."""
    try:
        cost = pricer.price_llm(usage)
    except PricingError:
        return None
    return cost.total if cost.currency == currency else None


def recommendations_report(w: Warehouse, pricer: Pricer, days: int = 30) -> Report:
    items = recommend(w, pricer, days=days)
    rows = [[r.kind, r.subject, r.currency, r.monthly_saving, r.detail] for r in items]
    totals: dict[str, Decimal] = {}
    for r in items:
        totals[r.currency] = totals.get(r.currency, Decimal(0)) + r.monthly_saving
    per_currency = ", ".join(f"{total} {currency}" for currency, total in sorted(totals.items()))
    notes = [f"estimated from the last {days} days, scaled to 30; total {per_currency} per "
             "month" if items else "nothing to recommend for this period"]  # fmt: skip
    return Report("optimization recommendations", ["kind", "subject", "currency",
                                                   "saving / month", "detail"], rows, notes)  # fmt: skip
