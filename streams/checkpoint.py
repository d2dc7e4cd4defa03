"""The aggregator's checkpoint: what batches changed, written together at most once per
interval, and only then their input offsets committed.

Writing each changed (budget, period) state and status after every batch cost one faust
changelog record and one status record per budget per batch (with 1,000 budgets, most of
the aggregator's time). So a batch only applies its allocations to states held in memory
and sends the threshold alerts it crossed at once; the checkpoint then writes each state
and status that changed since the last one, once, and lets the batches' offsets commit.
A crash between two checkpoints replays the batches since the last one: the states in the
table do not have them yet (or have them with their watermarks), so each allocation still
counts exactly once.

A checkpoint is taken under the aggregation lock, a slice of states at a time (``begin``,
``Taking.step``: trend rules, states and statuses frozen), and written outside it
(``write``: the broker's acks, the table, the statuses), so batches keep counting and
alerting while it waits for the broker: the lock is held for the CPU work of one slice
only, which is what a threshold alert may wait behind.

``Checkpoint`` takes its collaborators as plain functions, so a test drives it without
Kafka or faust; streams/app.py wires it to the faust table, the output producer and the
offset guard.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

from spendstream.schemas.models import BudgetAlert

from .aggregate_stage import AggregateResult
from .aggregation import AlertPolicy, PeriodState, status_record, trend_alerts
from .matching import BudgetRegistry

Source = TypeVar("Source")

#: a write hands the event loop back every this many states or statuses: its CPU work
#: (a thousand table writes and status encodings) would otherwise stall the batches
#: waiting behind it for ~0.1 s, although it holds no lock
YIELD_EVERY = 50


@dataclass
class Dirty(Generic[Source]):
    state: PeriodState
    #: the record the state's last allocation came from (the table writes in its partition)
    source: Source
    #: the event that last changed it (alerts name it)
    event_id: str | None


@dataclass
class Snapshot(Generic[Source]):
    """A checkpoint's content, taken under the aggregation lock and written after it."""

    #: ("budget|period", table value, the record whose partition it is written in)
    states: list[tuple[str, str, Source]] = field(default_factory=list)
    #: ("budget|period", BudgetStatus Avro record)
    statuses: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    #: the records of the batches it holds (finished once it is written)
    records: list[Any] = field(default_factory=list)


@dataclass
class Checkpoint(Generic[Source]):
    registry: BudgetRegistry
    policy: AlertPolicy
    #: write one state (its table value, ``PeriodState.dumps``) in the partition of ``source``
    write_state: Callable[[str, str, Source], None]
    send_alert: Callable[[BudgetAlert], None]
    #: publish one status, given as its Avro record (``aggregation.status_record``)
    send_status: Callable[[str, dict[str, Any]], None]
    #: wait until everything sent is acknowledged by the broker
    drain: Callable[[], Awaitable[None]]
    #: let the offsets of these records commit
    finish: Callable[[list[Any]], None]
    resolved: Callable[[], set[str]] = set
    #: send ``conversions/1`` rows (allocations converted to their budget's currency)
    send_conversions: Callable[[list[list[Any]]], None] = lambda rows: None
    interval_s: float = 1.0
    clock: Callable[[], float] = time.monotonic
    #: "budget|period" -> the newest state (the table's value, or newer)
    states: dict[str, PeriodState] = field(default_factory=dict)
    dirty: dict[str, Dirty[Source]] = field(default_factory=dict)
    #: records of batches processed since the last checkpoint
    waiting: list[Any] = field(default_factory=list)
    #: when the oldest batch in ``waiting`` was taken
    since: float = 0.0
    #: keys of the snapshot being written (kept in memory until the table has them)
    in_flight: set[str] = field(default_factory=set)

    def load(self, key: str, stored: Callable[[str], str | None]) -> PeriodState:
        """The newest state of ``key``: in memory, else from the table."""
        state = self.states.get(key)
        if state is None:
            if len(self.states) > 200_000:  # bound memory: keep only what is unwritten
                keep = self.dirty.keys() | self.in_flight
                self.states = {k: v for k, v in self.states.items() if k in keep}
            state = self.states[key] = PeriodState.loads(stored(key))
        return state

    async def batch(self, result: AggregateResult[Source], events: Iterable[Any]) -> None:
        """Take a processed batch: send its threshold alerts now (they must not wait for
        the checkpoint; the producer delivers them within milliseconds, and the
        checkpoint's drain waits for their acks before any state recording them is
        written), remember its changed states and its records."""
        for alert in result.alerts:
            self.send_alert(alert)
        if result.conversions:  # like the alerts: acked before the states that count them
            self.send_conversions(result.conversions)
        if not self.waiting and not self.dirty:
            self.since = self.clock()  # the interval runs from the oldest unwritten batch
        for key, state in result.states.items():
            self.dirty[key] = Dirty(state, result.sources[key], result.last_event.get(key))
        self.waiting.extend(events)

    def due(self) -> bool:
        """A release of held allocations changes states without input records: they are
        due like a batch's."""
        return bool(self.waiting or self.dirty) and self.clock() - self.since >= self.interval_s

    def take(self, now: datetime) -> Snapshot[Source]:
        """Step 1 at once (tests; the worker takes its checkpoints a slice at a time):
        ``begin`` and every state frozen."""
        taking = self.begin(now)
        taking.step(len(taking.left))
        return taking.snapshot

    def begin(self, now: datetime) -> Taking[Source]:
        """Step 1 of the protocol, begun under the aggregation lock: the batches since the
        last checkpoint and the states they changed are taken (later batches start a new
        checkpoint); ``Taking.step`` then freezes the states a slice at a time, each slice
        under the lock, so that batches run between slices: freezing 1,000 states (their
        forecast and anomaly rules, table values and statuses) held the lock ~0.1 s, and
        every batch behind it, once a second. Steps 2-5 (``write``) wait for the broker
        while the next batches are processed.

        1. Forecast and anomaly rules run once per changed (budget, period); the alerts
           due are recorded in its state and sent; the state is frozen as its table value
           and its status record. A batch run between two slices may have changed a state
           frozen after it: the snapshot then holds its newer value, whose alerts were
           sent before (so step 2 waits for their acks too) and whose records finish with
           the next checkpoint (replayed after a crash, the watermarks in the state skip
           them). Crash after: the states that record the alerts were not written; the
           replayed batches fire them again with the same alert ids (subscribers and the
           sink dedupe on them).
        """
        dirty, waiting = self.dirty, self.waiting
        self.dirty, self.waiting = {}, []
        self.in_flight = set(dirty)
        return Taking(self, list(dirty.items()), now, self.resolved(), Snapshot(records=waiting))

    def freeze(self, key: str, change: Dirty[Source], now: datetime, done: set[str],
               snapshot: Snapshot[Source]) -> None:  # fmt: skip
        """Step 1 for one changed state (``begin``)."""
        budget_id, period_key = key.split("|", 1)
        budget = self.registry.get(budget_id)
        if budget is not None:
            for alert in trend_alerts(budget, period_key, change.state, now,
                                      change.event_id, self.policy):  # fmt: skip
                self.send_alert(alert)
        snapshot.states.append((key, change.state.dumps(), change.source))
        if budget is not None:
            snapshot.statuses.append(
                (key, status_record(budget, period_key, change.state, now, done))
            )

    async def write(self, snapshot: Snapshot[Source]) -> int:
        """Steps 2-5, outside the aggregation lock (batches go on meanwhile; one write at
        a time, and no revocation during one: the caller's write lock); returns the number
        of states written.

        2. Wait for the broker's acks of every alert and conversion row sent so far (the
           snapshot's batches' threshold alerts and step 1's included). Crash after: as
           after 1; the same conversions come again (ClickHouse keeps one row per event
           and budget); held allocations released since are still held in the stored
           states and are released again.
        3. Write each state of the snapshot to the table (faust sends it to the changelog
           and flushes its producer before committing offsets). A batch processed since
           the snapshot is not in it: its records are finished by the next checkpoint.
           Crash after: the batches are replayed; the watermarks in whichever state was
           restored skip what it counted.
        4. Publish each status of the snapshot and wait for the acks. Crash after: as
           after 3; the statuses go out again, equal or newer (readers keep the newest).
        5. Finish the snapshot's records: faust may commit their offsets. Crash after:
           nothing is replayed.
        """
        try:
            await self.drain()  # 2.
            for i, (key, value, source) in enumerate(snapshot.states, 1):  # 3.
                self.write_state(key, value, source)
                if i % YIELD_EVERY == 0:
                    await asyncio.sleep(0)
            for i, (key, record) in enumerate(snapshot.statuses, 1):  # 4.
                self.send_status(key, record)
                if i % YIELD_EVERY == 0:
                    await asyncio.sleep(0)
            await self.drain()
            self.finish(snapshot.records)  # 5.
        finally:
            self.in_flight = set()
        return len(snapshot.states)

    async def commit(self, now: datetime) -> int:
        """``take`` and ``write`` at once (tests)."""
        return await self.write(self.take(now))

    def forget(self, lost: Callable[[Source], bool]) -> None:
        """Partitions were revoked: drop their states and records (the new owner restores
        the states from the changelog and replays the records since the last commit)."""
        self.dirty = {k: d for k, d in self.dirty.items() if not lost(d.source)}
        self.states = {k: s for k, s in self.states.items() if k in self.dirty}
        self.waiting = [e for e in self.waiting if not lost(e)]


@dataclass
class Taking(Generic[Source]):
    """A checkpoint being taken (``Checkpoint.begin``): the changed states still to freeze
    and the snapshot so far."""

    checkpoint: Checkpoint[Source]
    left: list[tuple[str, Dirty[Source]]]
    now: datetime
    done: set[str]
    snapshot: Snapshot[Source]
    #: how many of ``left`` are frozen
    frozen: int = 0

    def step(self, count: int = YIELD_EVERY) -> bool:
        """Freeze the next ``count`` states (call under the aggregation lock); True once
        every state is in the snapshot."""
        end = self.frozen + count
        for key, change in self.left[self.frozen : end]:
            self.checkpoint.freeze(key, change, self.now, self.done, self.snapshot)
        self.frozen = min(end, len(self.left))
        return self.frozen == len(self.left)
