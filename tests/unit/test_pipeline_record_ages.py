"""The pipeline benchmark's per-stage record ages: the difference of two /metrics scrapes."""

from __future__ import annotations

import sys
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from spendstream.metrics import SECONDS_BUCKETS, Histogram, histogram_family

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.pipeline import parse_record_ages, record_ages  # noqa: E402


def scrape(price: list[float], aggregate: list[float]) -> str:
    """/metrics text as a worker serves it, with these record ages observed."""
    hists = {"price": Histogram(SECONDS_BUCKETS), "aggregate": Histogram(SECONDS_BUCKETS)}
    for stage, ages in (("price", price), ("aggregate", aggregate)):
        for age in ages:
            hists[stage].observe(age)

    class Families:
        def collect(self):  # type: ignore[no-untyped-def]
            return [histogram_family("spendstream_record_age_seconds", "ages", "stage", hists)]

    registry = CollectorRegistry()
    registry.register(Families())  # type: ignore[arg-type]
    return generate_latest(registry).decode()


def test_only_the_batches_between_the_scrapes_count() -> None:
    early = [30.0, 40.0]  # phase 1: preloaded records, tens of seconds old
    before = parse_record_ages(scrape(price=early, aggregate=[0.02]))
    price = early + [0.02] * 99 + [0.4]
    aggregate = [0.02] + [0.03] * 50 + [0.2] * 50
    after = parse_record_ages(scrape(price=price, aggregate=aggregate))
    ages = record_ages(before, after)
    assert ages["price"]["batches"] == 100
    assert ages["price"]["mean_ms"] == round((99 * 0.02 + 0.4) / 100 * 1000, 1)
    assert ages["price"]["p99_at_most_ms"] == 25  # 99 of 100 at or below 0.025 s
    assert ages["aggregate"] == {"batches": 100, "mean_ms": 115.0, "p99_at_most_ms": 250}


def test_a_stage_without_batches_in_between_is_left_out_and_inf_is_none() -> None:
    before = parse_record_ages(scrape(price=[1.0], aggregate=[]))
    after = parse_record_ages(scrape(price=[1.0, 100.0], aggregate=[]))
    assert record_ages(before, after) == {
        "price": {"batches": 1, "mean_ms": 100000.0, "p99_at_most_ms": None}
    }
