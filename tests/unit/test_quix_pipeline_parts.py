"""The pure parts of the quixstreams comparison app (benchmarks/quix_pipeline.py) and the
limits block of benchmarks/pipeline.py: the app must price exactly like our pricer, or the
ratio compares different jobs. Runs without quixstreams (it lives in .venv-quix only)."""

from __future__ import annotations

import sys
import tomllib
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from spendstream.schemas.avro import codec
from spendstream.schemas.models import Attributes, LlmUsage, UsageEvent
from spendstream.streams.pricing import Pricer

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks import quix_pipeline as qp  # noqa: E402

WHEN = datetime(2026, 11, 20, 9, tzinfo=UTC)


def usage(input_tokens: int, output_tokens: int, cache_read_tokens: int = 0) -> UsageEvent:
    return UsageEvent(
        event_id="e-1", occurred_at=WHEN, source="llm",
        attributes=Attributes(org="bench", team="team-7"),
        payload=LlmUsage(provider="openai", model="gpt-4o-mini", input_tokens=input_tokens,
                         output_tokens=output_tokens, cache_read_tokens=cache_read_tokens),
    )  # fmt: skip


def decoded(event: UsageEvent) -> dict:
    """What the app's deserializer hands the dataframe: our codec's decode."""
    avro = codec("UsageEvent")
    return avro.decode(avro.encode(event.to_avro()))


@pytest.mark.parametrize(
    ("input_tokens", "output_tokens", "cache_read_tokens"),
    [(100, 10, 0), (1, 1, 0), (7, 3, 0), (2000, 200, 0), (123_457, 9_999, 0),
     (1_000_003, 77, 0), (5000, 40, 1024), (3, 1, 1)],
)  # fmt: skip
def test_quix_price_equals_our_pricer_to_the_nano(input_tokens, output_tokens, cache_read_tokens):
    event = usage(input_tokens, output_tokens, cache_read_tokens)
    ours = Pricer().price(event)
    assert ours.source.startswith("genai-prices")  # both read genai-prices' rates
    cost = qp.ModelPrices().cost_nanos(decoded(event))
    assert Decimal(cost).scaleb(-9) == ours.total
    assert qp.usd(cost) == f"{ours.total:.9f}"


def test_rates_are_looked_up_once_per_provider_and_model():
    prices = qp.ModelPrices()
    for tokens in (10, 20, 30):
        prices.cost_nanos(decoded(usage(tokens, 1)))
    assert list(prices.rates) == [("openai", "gpt-4o-mini")]


def test_each_line_is_rounded_half_even_once():
    assert [qp.div_half_even(n, 10) for n in (14, 15, 25, 26, -15)] == [1, 2, 2, 3, -2]
    rates = qp.Rates(input=150_000, output=600_000)  # 0.15 and 0.6 nano-USD a token
    # 3 input tokens: 0.45 nano -> 0; 5 output: 3 nano exactly
    assert rates.cost({"input_tokens": 3, "output_tokens": 5}) == 3
    # 10 input tokens: 1.5 nano -> 2 (half-even), 1 output: 0.6 -> 1; the sum of the lines
    assert rates.cost({"input_tokens": 10, "output_tokens": 1}) == 3


def test_counts_it_does_not_price_are_refused_not_ignored():
    rates = qp.Rates(input=1, output=1)
    with pytest.raises(ValueError, match="plain token calls"):
        rates.cost({"input_tokens": 10, "output_tokens": 1, "cache_write_tokens": 5})
    with pytest.raises(ValueError, match="cache-read price"):
        rates.cost({"input_tokens": 10, "output_tokens": 1, "cache_read_tokens": 5})
    with pytest.raises(ValueError, match="9 decimals"):
        qp.nanos(Decimal("0.0000000001"))


def test_an_event_counts_toward_its_team_and_its_org():
    rows = qp.allocations(decoded(usage(100, 10)), 21_000)
    assert [r["budget_id"] for r in rows] == ["team:team-7", "org:bench"]
    assert {(r["month"], r["cost_nanos"], r["event_id"]) for r in rows} == {
        ("2026-11", 21_000, "e-1")
    }
    limits = qp.Limits({"team": 5, "org": 9})
    assert [limits.of(r["budget_id"]) for r in rows] == [5, 9]
    assert limits.of("project:x") is None


def test_each_threshold_is_crossed_once_and_exactly_at_its_percent():
    spent, crossed = 0, []
    for _ in range(12):  # 12 x 10 against a limit of 100
        spent, now = qp.add_spend(spent, 10, 100)
        crossed += now
    assert spent == 120
    assert crossed == [50, 75, 90, 100]
    assert qp.add_spend(49, 1, 100) == (50, [50])  # exactly 50 % crosses 50
    assert qp.add_spend(0, 200, 100) == (200, [50, 75, 90, 100])  # one jump, every tier
    assert qp.add_spend(0, 200, None) == (200, [])  # no limit, no alerts


def test_progress_times_first_record_to_last_allocation():
    progress = qp.Progress(want=4)
    progress.record_in()
    first = progress.first
    progress.record_in()
    assert progress.first == first  # the first record, not the latest
    assert [progress.count() for _ in range(4)] == [False, False, False, True]
    result = progress.result(2, "3.28.1")
    assert result["allocations"] == 4 and result["events"] == 2
    assert result["quixstreams"] == "3.28.1"


def test_quix_venv_gets_spendstreams_own_pins():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    wanted = qp.requirements()
    assert wanted[0].startswith("quixstreams==3.")
    genai = [d for d in deps if d.startswith("genai-prices")]
    assert genai and genai[0] in wanted  # the very prices our pricer uses
    assert not any(d.startswith(("faust", "confluent-kafka", "pydantic-settings")) for d in wanted)
    assert {d.split("=")[0].split(">")[0] for d in wanted[1:]} == set(qp.PINNED)


def test_quixstreams_is_not_a_dependency_of_the_package():
    text = (ROOT / "pyproject.toml").read_text().lower()
    assert "quixstreams" not in text
    assert ".venv-quix/" in (ROOT / ".gitignore").read_text().splitlines()


def test_limits_block_puts_the_quixstreams_ratio_next_to_the_others():
    from benchmarks.pipeline import limits_block

    raw, floor = {"events_per_s": 40_000}, {"events_per_s": 4_000}
    quix = {"events_per_s": 3_000, "quixstreams": "3.28.1"}
    block = limits_block(6_000, raw, floor, quix)
    assert block["quixstreams_pipeline"] is quix
    assert block["job_over_quixstreams"] == 2.0
    assert block["job_over_faust_floor"] == 1.5
    assert block["job_over_raw_ceiling"] == 0.15
    skipped = limits_block(6_000, raw, floor, None)  # --no-quix
    assert skipped["quixstreams_pipeline"] is None and skipped["job_over_quixstreams"] is None
    assert skipped["job_over_faust_floor"] == 1.5
