"""The hourly buckets (the anomaly baseline) pruned only when a new hour starts hold exactly
what pruning at every allocation held: the week before the newest event, nothing older."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from spendstream.streams.aggregation import HOURS_KEPT, US_PER_HOUR, PeriodState


def reference_hours(adds: list[tuple[int, int]]) -> dict[int, int]:
    """The rule as first written: count the hour, then drop every hour out of the week."""
    hourly: dict[int, int] = {}
    last = 0
    for nanos, when in adds:
        last = max(last, when)
        hour, newest = when // US_PER_HOUR, last // US_PER_HOUR
        if hour > newest - HOURS_KEPT:
            hourly[hour] = hourly.get(hour, 0) + nanos
            for old in [h for h in hourly if h <= newest - HOURS_KEPT]:
                del hourly[old]
    return hourly


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10**9), st.integers(0, 400 * US_PER_HOUR)),
                max_size=120))  # fmt: skip
def test_hours_equal_the_prune_every_time_rule(adds: list[tuple[int, int]]) -> None:
    state = PeriodState()
    for nanos, when in adds:
        state.add(nanos, when, 0, 10**15)
    assert state.hourly == reference_hours(adds)
    if adds:
        newest = max(w for _, w in adds) // US_PER_HOUR
        assert all(newest - HOURS_KEPT < h <= newest for h in state.hourly)


def test_a_week_of_hours_moves_on_with_the_newest_event() -> None:
    state = PeriodState()
    for hour in range(HOURS_KEPT + 10):
        state.add(1, hour * US_PER_HOUR, 0, 10**15)
        state.add(1, hour * US_PER_HOUR + 1, 0, 10**15)  # same hour: no new bucket
    newest = HOURS_KEPT + 9
    assert sorted(state.hourly) == list(range(newest - HOURS_KEPT + 1, newest + 1))
    assert set(state.hourly.values()) == {2}
