"""The budget feed's statuses: raw records wait per key and are decoded when read, and
the newest (most counted) status wins whatever order the records arrived in."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from spendstream.schemas.avro import codec
from spendstream.schemas.budget import BudgetDefinition
from spendstream.schemas.models import BudgetStatus, to_micros
from spendstream.streams.aggregation import PeriodState, status_record
from spendstream.streams.budget_feed import (
    PROGRESS_HEADER,
    LatestStatuses,
    progress_header,
    progress_of,
)
from spendstream.streams.preflight import spent_from


def status(count: int, spent: str, budget: str = "org") -> BudgetStatus:
    return BudgetStatus(
        budget_id=budget, budget_name="Acme", period_key="2026-11",
        period_start=datetime(2026, 11, 1, tzinfo=UTC), period_end=datetime(2026, 12, 1, tzinfo=UTC),
        spent=Decimal(spent), limit=Decimal(100), currency="USD", event_count=count,
        state="normal", updated_at=datetime.now(UTC),
    )  # fmt: skip


def raw(s: BudgetStatus) -> bytes:
    return codec("BudgetStatus").encode(s.to_avro())


def test_newest_wins_in_any_arrival_order_and_only_read_keys_are_decoded():
    latest = LatestStatuses()
    for count, spent in [(3, "3.5"), (9, "9.000000001"), (5, "5")]:  # a stale one last
        latest.add("org|2026-11", raw(status(count, spent)))
    latest.add("team|2026-11", raw(status(1, "1", budget="team")))
    assert latest._decoded == {}  # nothing decoded on arrival
    assert spent_from(latest)("org|2026-11") == Decimal("9.000000001")
    assert "team|2026-11" not in latest._decoded  # a read decodes only its key
    assert spent_from(latest)("nope|2026-11") is None
    assert sorted(latest) == ["org|2026-11", "team|2026-11"]
    assert {s.budget_id for s in latest.values()} == {"org", "team"}


def test_records_fold_once_enough_wait_so_memory_stays_bounded():
    latest = LatestStatuses()
    for count in range(1, 3 * LatestStatuses.FOLD_AT + 2):
        latest.add("org|2026-11", raw(status(count, str(count))))
    assert len(latest._raw.get("org|2026-11", [])) < LatestStatuses.FOLD_AT
    assert latest["org|2026-11"].event_count == 3 * LatestStatuses.FOLD_AT + 1


def test_a_tombstone_removes_the_key_and_a_bad_record_is_counted_not_fatal():
    latest = LatestStatuses()
    latest.add("org|2026-11", raw(status(2, "2")))
    latest.add("org|2026-11", b"\x00not avro")
    assert latest["org|2026-11"].event_count == 2 and latest.rejected == 1
    latest.add("org|2026-11", raw(status(4, "4")))
    latest.add("org|2026-11", None)
    assert "org|2026-11" not in latest and len(latest) == 0
    latest["x|2026-11"] = status(1, "1", budget="x")  # tests and callers may set directly
    assert latest.get("x|2026-11").budget_id == "x"


def headed(s: BudgetStatus) -> tuple[bytes, tuple[int, int] | None]:
    """A status record as a worker sends it: the value and the progress its header states."""
    record = s.to_avro()
    return raw(s), progress_of([("origin", b"x"), (PROGRESS_HEADER, progress_header(record))])


def test_a_progress_header_keeps_one_undecoded_record_per_key_the_most_advanced():
    """Records stating their progress are compared by it, not decoded: a superseded one
    is dropped unread (the garbage below never counts as rejected), a stale one arriving
    last does not win, and a tie goes to the later record, as folding decides."""
    latest = LatestStatuses()
    latest.add("org|2026-11", b"\x00superseded, never decoded", (1, 10**9))
    for count, spent in [(3, "3.5"), (9, "9.000000001"), (5, "5")]:
        latest.add("org|2026-11", *headed(status(count, spent)))
    assert latest._raw == {} and latest._decoded == {} and len(latest._best) == 1
    assert latest._best["org|2026-11"][0] == (9, 9_000_000_001)
    tie = status(9, "9.000000001", budget="org").model_copy(update={"state": "warning"})
    latest.add("org|2026-11", *headed(tie))
    found = latest["org|2026-11"]
    assert (found.event_count, found.spent, found.state) == (9, Decimal("9.000000001"), "warning")
    assert latest.rejected == 0 and latest._best == {}
    latest.add("org|2026-11", *headed(status(10, "10")))
    latest.add("org|2026-11", None)  # a tombstone drops the waiting record too
    assert "org|2026-11" not in latest


def test_records_with_and_without_the_header_fold_together_newest_wins():
    """An older worker's records (no header) and a newer one's meet in one key."""
    latest = LatestStatuses()
    latest.add("org|2026-11", raw(status(7, "7")))  # no header: waits to be decoded
    latest.add("org|2026-11", *headed(status(6, "6")))
    assert latest["org|2026-11"].event_count == 7
    latest.add("org|2026-11", *headed(status(8, "8")))
    assert latest["org|2026-11"].event_count == 8


def test_the_progress_header_states_what_newer_status_compares() -> None:
    """Built from the checkpoint's own status record; unreadable headers state nothing."""
    b = BudgetDefinition(budget_id="org", name="org", limit=100)
    state = PeriodState(period_start_us=to_micros(datetime(2026, 11, 1, tzinfo=UTC)),
                        period_end_us=to_micros(datetime(2026, 12, 1, tzinfo=UTC)))  # fmt: skip
    state.count, state.spent_nanos = 12, 3_500_000_001
    record = status_record(b, "2026-11", state, datetime(2026, 11, 20, tzinfo=UTC))
    assert progress_header(record) == b"12:3500000001"
    assert progress_of([(PROGRESS_HEADER, progress_header(record))]) == (12, 3_500_000_001)
    for bad in ([], None, [(PROGRESS_HEADER, b"")], [(PROGRESS_HEADER, b"x:1")]):
        assert progress_of(bad) is None
