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
    same day — every repeat after the first.
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

    llm = w.query(
        "SELECT provider, model, sum(cost), sum(input_tokens), sum(cache_read_tokens), "
        "sum(cache_write_tokens), sum(output_tokens), count() FROM priced_usage FINAL "
        f"WHERE source = 'llm' AND priced = 1 AND {window} GROUP BY provider, model",
        params,
    )
    for provider, model, cost, inp, cached, written, out, calls in llm.rows:
        usage = LlmUsage(provider=provider, model=model, input_tokens=inp,
                         cache_read_tokens=cached, cache_write_tokens=written,
                         output_tokens=out)  # fmt: skip
        sibling = pricer.catalog.siblings.get((provider.lower(), model.lower()))
        if sibling:
            cheaper = _price(pricer, usage.model_copy(update={"provider": sibling[0],
                                                              "model": sibling[1]}))  # fmt: skip
            if cheaper is not None and cheaper < cost:
                found.append(Recommendation(
                    "cheaper model", f"{provider}/{model}",
                    f"{calls} calls would cost {cheaper} instead of {cost} on {sibling[1]}; "
                    "route the easier ones there",
                    money((cost - cheaper) * scale)))  # fmt: skip
        uncached = inp - cached - written
        if inp >= MIN_PROMPT_TOKENS and Decimal(cached) < LOW_CACHE_RATIO * inp:
            half = uncached // 2
            now_cost = _price(pricer, usage)
            better = _price(pricer, usage.model_copy(update={"cache_read_tokens": cached + half}))
            if now_cost is not None and better is not None and better < now_cost:
                ratio = (Decimal(cached) * 100 / inp).quantize(Decimal("0.1"))
                found.append(Recommendation(
                    "prompt caching", f"{provider}/{model}",
                    f"cache hit ratio {ratio}% of {inp} prompt tokens; put stable prefixes "
                    "(system prompts, tools, documents) first so they are cached",
                    money((now_cost - better) * scale)))  # fmt: skip

    failed = w.query(
        "SELECT source, if(source = 'apify', actor_id, concat(platform, ':', workflow_id)) "
        "AS subject, count(), sum(cost) FROM priced_usage FINAL WHERE source IN "
        "('apify', 'workflow') AND lower(status) IN {failed:Array(String)} AND "
        f"{window} GROUP BY source, subject HAVING sum(cost) > 0",
        {**params, "failed": list(FAILED)},
    )
    for source, subject, runs, cost in failed.rows:
        found.append(Recommendation(
            "failed runs", subject,
            f"{runs} failed {'runs' if source == 'apify' else 'executions'} cost {cost}; fix "
            "the cause or stop retrying", money(cost * scale)))  # fmt: skip

    repeats = w.query(
        "SELECT actor_id, toDate(occurred_at) AS day, results, compute_units, count() AS n, "
        "sum(cost) AS total, min(cost) AS first FROM priced_usage FINAL WHERE source = 'apify' "
        f"AND {window} GROUP BY actor_id, day, results, compute_units HAVING n > 1",
        params,
    )
    by_actor: dict[str, list[Any]] = {}
    for actor, _day, _results, _cu, n, total, first in repeats.rows:
        entry = by_actor.setdefault(actor, [0, Decimal(0)])
        entry[0] += n - 1
        entry[1] += total - first
    for actor, (extra, cost) in by_actor.items():
        if cost > 0:
            found.append(Recommendation(
                "repeated runs", actor,
                f"{extra} runs repeated an identical run of the same day (same results and "
                "compute units); cache or deduplicate the input", money(cost * scale)))  # fmt: skip
    found.sort(key=lambda r: (-r.monthly_saving, r.kind, r.subject))
    return found


def _price(pricer: Pricer, usage: LlmUsage) -> Decimal | None:
    try:
        return pricer.price_llm(usage).total
    except PricingError:
        return None


def recommendations_report(w: Warehouse, pricer: Pricer, days: int = 30) -> Report:
    items = recommend(w, pricer, days=days)
    rows = [[r.kind, r.subject, r.monthly_saving, r.detail] for r in items]
    total = sum((r.monthly_saving for r in items), Decimal(0))
    notes = [f"estimated from the last {days} days, scaled to 30; total {total} per month"
             if items else "nothing to recommend for this period"]  # fmt: skip
    return Report("optimization recommendations", ["kind", "subject", "saving / month",
                                                   "detail"], rows, notes)  # fmt: skip
