"""The budget feed's statuses: raw records wait per key and are decoded when read, and
the newest (most counted) status wins whatever order the records arrived in."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from spendstream.schemas.avro import codec
from spendstream.schemas.models import BudgetStatus
from spendstream.streams.budget_feed import LatestStatuses
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
