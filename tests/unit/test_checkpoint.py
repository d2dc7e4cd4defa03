"""The aggregator's checkpoint, driven without Kafka or faust: threshold alerts go out
with their batch; states and statuses once per checkpoint, in the protocol's order, and
only then the batches' records are finished (their offsets may commit)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from spendstream.schemas.budget import BudgetDefinition
from spendstream.streams.aggregate_stage import AggregateStage
from spendstream.streams.aggregation import AlertPolicy, PeriodState
from spendstream.streams.checkpoint import Checkpoint
from spendstream.streams.matching import BudgetRegistry
from tests.unit.test_aggregate_stage import NOW, alloc

BUDGET = BudgetDefinition(budget_id="b", name="B", limit="10")
OTHER = BudgetDefinition(budget_id="c", name="C", limit="1000")


def make(journal: list, clock: list[float]) -> Checkpoint:
    async def drain() -> None:
        journal.append(("drain",))

    return Checkpoint(
        BudgetRegistry([BUDGET, OTHER]), AlertPolicy(),
        write_state=lambda key, value, source: journal.append(
            ("state", key, PeriodState.loads(value).spent, source)),
        send_alert=lambda a: journal.append(("alert", a.alert_id)),
        send_status=lambda key, st: journal.append(("status", key, st["spent"])),
        drain=drain, finish=lambda events: journal.append(("finish", list(events))),
        interval_s=1.0, clock=lambda: clock[0],
    )  # fmt: skip


def run(checkpoint: Checkpoint, records: list, events: list) -> None:
    stage = AggregateStage(checkpoint.registry)
    table: dict[str, str] = {}
    result = stage.process(records, lambda k: checkpoint.load(k, table.get), NOW)
    asyncio.run(checkpoint.batch(result, events))


def test_two_batches_one_checkpoint():
    journal: list = []
    clock = [100.0]
    cp = make(journal, clock)
    run(cp, [("rec-1", [alloc(1, "6"), alloc(2, "1", budget="c")])], ["ev-1"])
    # the 50 % tier went out with its batch (its ack is awaited at the checkpoint)
    assert journal == [("alert", "b:2026-11:threshold:50")]
    assert not cp.due()
    run(cp, [("rec-2", [alloc(3, "1"), alloc(4, "2", budget="c")])], ["ev-2"])
    clock[0] = 101.0
    assert cp.due()
    journal.clear()
    assert asyncio.run(cp.commit(datetime(2026, 11, 20, 12, tzinfo=UTC))) == 2
    kinds = [entry[0] for entry in journal]
    # the forecast rule ran once per changed budget (7 of 10 on day 20: the month end
    # projects past the limit) and its alert went out first; then every state once (the
    # newest), every status once, and only then the records finish
    assert kinds == ["alert", "drain", "state", "state", "status", "status", "drain", "finish"]
    assert kinds.index("drain") < kinds.index("state")  # every alert acked before any state
    assert journal[0] == ("alert", "b:2026-11:forecast")
    assert ("state", "b|2026-11", 7, "rec-2") in journal
    assert ("state", "c|2026-11", 3, "rec-2") in journal
    assert journal[-1] == ("finish", ["ev-1", "ev-2"])
    assert not cp.due() and cp.dirty == {} and cp.waiting == []


def test_states_stay_in_memory_between_checkpoints():
    journal: list = []
    cp = make(journal, [0.0])
    run(cp, [("r", [alloc(1, "2")])], ["e1"])
    # the second batch builds on the first one's state, not on the (empty) table
    run(cp, [("r", [alloc(2, "2")])], ["e2"])
    assert cp.states["b|2026-11"].spent == 4
    assert isinstance(cp.load("b|2026-11", lambda k: None), PeriodState)


def test_a_revoked_partition_is_forgotten_and_its_records_never_finish():
    journal: list = []
    clock = [0.0]
    cp = make(journal, clock)
    run(cp, [("p0", [alloc(1, "1")]), ("p1", [alloc(2, "1", budget="c")])], ["e-p0", "e-p1"])
    cp.forget(lambda x: x in ("p1", "e-p1"))
    clock[0] = 5.0
    asyncio.run(cp.commit(NOW))
    assert [e[1] for e in journal if e[0] == "state"] == ["b|2026-11"]
    assert journal[-1] == ("finish", ["e-p0"])


def test_a_batch_while_a_checkpoint_is_written_waits_for_the_next_one():
    """The write runs outside the aggregation lock: a batch processed meanwhile changes
    the in-memory state, but the table gets the snapshot's value and only the snapshot's
    records finish; the next checkpoint writes and finishes the rest."""
    journal: list = []
    clock = [0.0]
    cp = make(journal, clock)
    run(cp, [("r1", [alloc(1, "2")])], ["e1"])
    snapshot = cp.take(NOW)
    assert cp.in_flight == {"b|2026-11"} and cp.dirty == {} and cp.waiting == []
    # the state being written stays in memory when memory is trimmed (a reload from the
    # table, which does not have it yet, would lose the snapshot's allocations)
    cp.states.update({f"x|{i}": PeriodState() for i in range(200_001)})
    cp.load("c|2026-11", lambda k: None)
    assert "b|2026-11" in cp.states and "x|0" not in cp.states
    run(cp, [("r2", [alloc(2, "3")])], ["e2"])  # lands between take and write
    assert cp.states["b|2026-11"].spent == 5
    journal.clear()
    assert asyncio.run(cp.write(snapshot)) == 1
    assert ("state", "b|2026-11", 2, "r1") in journal  # the snapshot, not the newer state
    assert [e for e in journal if e[0] == "status"] == [("status", "b|2026-11", 2)]
    assert journal[-1] == ("finish", ["e1"]) and cp.in_flight == set()
    journal.clear()
    clock[0] = 2.0
    assert cp.due()
    asyncio.run(cp.commit(NOW))
    assert ("state", "b|2026-11", 5, "r2") in journal and journal[-1] == ("finish", ["e2"])


def test_batches_run_between_the_slices_of_a_checkpoint_being_taken():
    """A checkpoint freezes its states a slice at a time, each under the aggregation lock,
    so a batch can run between two slices: a state frozen after it holds its newer value,
    whose alert went out before the drain that precedes every state; only the snapshot's
    records finish, the batch's with the next checkpoint (which writes the state again)."""
    journal: list = []
    clock = [0.0]
    cp = make(journal, clock)
    run(cp, [("r1", [alloc(1, "1"), alloc(2, "1", budget="c")])], ["e1"])
    taking = cp.begin(NOW)
    assert cp.dirty == {} and cp.waiting == [] and cp.in_flight == {"b|2026-11", "c|2026-11"}
    assert not taking.step(1)  # b frozen at 1; c not yet
    run(cp, [("r2", [alloc(3, "6"), alloc(4, "2", budget="c")])], ["e2"])  # between slices
    assert taking.step(1)
    journal.clear()
    assert asyncio.run(cp.write(taking.snapshot)) == 2
    states = {e[1]: e[2] for e in journal if e[0] == "state"}
    assert states == {"b|2026-11": 1, "c|2026-11": 3}  # b as frozen, c with the batch's 2
    assert journal[0] == ("drain",) and journal[-1] == ("finish", ["e1"])
    # the next checkpoint writes both again with the second batch, and finishes its record
    journal.clear()
    clock[0] = 2.0
    assert cp.due()
    asyncio.run(cp.commit(NOW))
    states = {e[1]: e[2] for e in journal if e[0] == "state"}
    assert states == {"b|2026-11": 7, "c|2026-11": 3} and journal[-1] == ("finish", ["e2"])


def test_the_alerts_of_a_batch_between_slices_are_sent_before_the_drain():
    journal: list = []
    cp = make(journal, [0.0])
    run(cp, [("r1", [alloc(1, "1"), alloc(2, "1", budget="c")])], ["e1"])
    taking = cp.begin(NOW)
    taking.step(1)
    run(cp, [("r2", [alloc(3, "1"), alloc(4, "600", budget="c")])], ["e2"])  # c at 60 %
    taking.step(1)
    asyncio.run(cp.write(taking.snapshot))
    kinds = [e[0] for e in journal]
    sent = kinds.index("alert")
    assert journal[sent] == ("alert", "c:2026-11:threshold:50")
    assert ("status", "c|2026-11", 601) in journal  # c frozen after the batch
    assert sent < kinds.index("drain") < kinds.index("state")  # acked before c's state
