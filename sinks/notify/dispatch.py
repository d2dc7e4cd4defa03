"""Which alert goes where, when, and when its offset may be committed; no Kafka, no I/O.

The service (service.py) feeds alerts in with their topic positions, runs the deliveries
``ready`` hands out (on worker threads), reports each result with ``finished``, and
commits what ``committable`` returns. Guarantees, stated once:

- At least once per (alert id, channel): an alert's offset becomes committable only when
  each of its channels has delivered or given up, and only after the delivery records
  saying so were handed to the outbox (the service flushes the outbox before committing).
- Nothing twice on replay: (alert id, channel) pairs the delivery log already shows as
  delivered or given up are skipped (``done_before``, read back from the log at start).
- Given up means: a final answer (HTTP 4xx other than 408/429, SMTP 5xx), or the channel's
  last attempt failed; the alert then goes to the outbox's dead letters with the reason.
- No storms: each channel has a token bucket (``rate_per_minute``/``burst``) and at most
  ``IN_FLIGHT`` sends at a time; a digest channel collects alerts for ``digest_minutes``
  and sends them as one message.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import random
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from spendstream.sinks.notify.channels import SendResult
from spendstream.sinks.notify.config import NotifyRules, RetryPolicy

TP = tuple[str, int]
#: sends at a time per channel
IN_FLIGHT = 4


@dataclass
class Pending:
    """An alert read from the topic whose channels are not all done."""

    tp: TP
    offset: int
    view: dict[str, Any]  # the alert, JSON-ready (what channels send)
    value: bytes  # the record as it was on the topic (what a dead letter keeps)
    waiting: set[str] = field(default_factory=set)

    @property
    def alert_id(self) -> str:
        return str(self.view["alert_id"])


@dataclass
class Delivery:
    """One message to one channel: an alert, or several collected by a digest."""

    channel: str
    alerts: list[Pending]
    key: str  # the receiver's idempotency key
    attempt: int = 0  # attempts made so far


class Outbox(Protocol):
    """Where the records of what happened go (the service produces them to Kafka)."""

    def delivery(self, record: dict[str, Any]) -> None: ...

    def dead_letter(self, record: dict[str, Any]) -> None: ...


class TokenBucket:
    """``burst`` sends at once, then ``per_s`` a second."""

    def __init__(self, per_s: float, burst: int, now: float) -> None:
        self.per_s, self.burst = per_s, burst
        self.tokens, self.at = float(burst), now

    def wait(self, now: float) -> float:
        """Seconds until a token is there (0: one is)."""
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.per_s)
        self.at = now
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.per_s

    def take(self) -> None:
        self.tokens -= 1


class Offsets:
    """Offsets of one partition in the order read; the committable position is the one
    after the longest done prefix (a slow alert holds back those behind it)."""

    def __init__(self) -> None:
        self.order: deque[int] = deque()
        self.done: set[int] = set()
        self.next: int | None = None

    def add(self, offset: int) -> None:
        self.order.append(offset)

    def finish(self, offset: int) -> None:
        self.done.add(offset)
        while self.order and self.order[0] in self.done:
            first = self.order.popleft()
            self.done.discard(first)
            self.next = first + 1


def backoff_s(
    policy: RetryPolicy, attempt: int, retry_after: float | None, rng: random.Random
) -> float:
    """Wait before attempt ``attempt + 1``: exponential with equal jitter (half fixed, half
    random, so retries of many alerts spread out), never less than the receiver's
    Retry-After (capped at ``max_retry_after_s``)."""
    base = min(policy.max_s, policy.initial_s * 2 ** (attempt - 1))
    wait = base / 2 + rng.uniform(0, base / 2)
    if retry_after is not None:
        wait = max(wait, min(retry_after, policy.max_retry_after_s))
    return wait


class Dispatcher:
    def __init__(
        self,
        config: NotifyRules,
        outbox: Outbox,
        *,
        done_before: Iterable[tuple[str, str]] = (),
        now: Callable[[], float],
        wall_us: Callable[[], int],
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.outbox = outbox
        self.now = now
        self.wall_us = wall_us
        self.rng = rng or random.Random()
        #: (alert id, channel) delivered or given up, durable in the delivery log
        self.settled: set[tuple[str, str]] = set(done_before)
        self.partitions: dict[TP, Offsets] = {}
        self.pending: dict[tuple[TP, int], Pending] = {}
        self.queue: list[tuple[float, int, Delivery]] = []  # (due, tie-break, delivery)
        self._seq = itertools.count()
        self.digests: dict[str, tuple[float, list[Pending]]] = {}
        self.in_flight: dict[str, int] = dict.fromkeys(config.channels, 0)
        t0 = now()
        self.buckets = {
            name: TokenBucket(c.rate_per_minute / 60, c.burst, t0)
            for name, c in config.channels.items()
            if c.rate_per_minute
        }
        self.stats: dict[str, int] = dict.fromkeys(
            ("alerts", "delivered", "retried", "failed", "skipped", "unrouted", "digests"), 0
        )

    # --- input ---------------------------------------------------------------------------
    def offer(self, tp: TP, offset: int, view: dict[str, Any] | None, value: bytes) -> None:
        """An alert read at ``tp``/``offset`` (``view`` None: it did not decode, and goes
        to the dead letters at once)."""
        self.partitions.setdefault(tp, Offsets()).add(offset)
        self.stats["alerts"] += 1
        if view is None:
            self.outbox.dead_letter(
                self._dead(None, value, "", "undecodable alert record", None, 0)
            )
            self.partitions[tp].finish(offset)
            return
        p = Pending(tp, offset, view, value)
        channels = self.config.channels_for(view)
        if not channels:
            self.stats["unrouted"] += 1
        for name in channels:
            if (p.alert_id, name) in self.settled:
                self.stats["skipped"] += 1
                continue
            p.waiting.add(name)
            if self.config.channels[name].digest_minutes:
                opened, members = self.digests.setdefault(name, (self.now(), []))
                members.append(p)
            else:
                self._schedule(Delivery(name, [p], p.alert_id), self.now())
        if p.waiting:
            self.pending[(tp, offset)] = p
        else:
            self.partitions[tp].finish(offset)

    def forget(self, tps: Iterable[TP]) -> None:
        """Partitions this process no longer owns (rebalance): their alerts are the new
        owner's; results of sends still running for them are recorded but change nothing."""
        gone = set(tps)
        for tp in gone:
            self.partitions.pop(tp, None)
        for key in [k for k in self.pending if k[0] in gone]:
            del self.pending[key]
        self.queue = [q for q in self.queue if any(p.tp not in gone for p in q[2].alerts)]
        heapq.heapify(self.queue)
        for name, (opened, members) in list(self.digests.items()):
            kept = [p for p in members if p.tp not in gone]
            if kept:
                self.digests[name] = (opened, kept)
            else:
                del self.digests[name]

    # --- scheduling ----------------------------------------------------------------------
    def _schedule(self, d: Delivery, due: float) -> None:
        heapq.heappush(self.queue, (due, next(self._seq), d))

    def _ripe_digests(self, now: float) -> None:
        for name, (opened, members) in list(self.digests.items()):
            minutes = self.config.channels[name].digest_minutes or 0
            if now - opened >= minutes * 60:
                del self.digests[name]
                ids = sorted(p.alert_id for p in members)
                key = "digest-" + hashlib.sha256("\n".join(ids).encode()).hexdigest()[:32]
                self.stats["digests"] += 1
                self._schedule(Delivery(name, members, key), now)

    def ready(self) -> list[Delivery]:
        """Deliveries to send now (each counted in flight until ``finished``)."""
        now = self.now()
        self._ripe_digests(now)
        out, later = [], []
        while self.queue and self.queue[0][0] <= now:
            due, seq, d = heapq.heappop(self.queue)
            bucket = self.buckets.get(d.channel)
            wait = bucket.wait(now) if bucket else 0.0
            if self.in_flight[d.channel] >= IN_FLIGHT or wait > 0:
                later.append((max(due, now + wait), seq, d))
                continue
            if bucket:
                bucket.take()
            self.in_flight[d.channel] += 1
            d.attempt += 1
            out.append(d)
        for item in later:
            heapq.heappush(self.queue, item)
        return out

    def next_due_s(self) -> float:
        """Seconds until something is due (for the poll timeout); 1 s when nothing is."""
        now = self.now()
        times = [self.queue[0][0]] if self.queue else []
        for name, (opened, _) in self.digests.items():
            times.append(opened + (self.config.channels[name].digest_minutes or 0) * 60)
        return max(0.0, min(times, default=now + 1.0) - now)

    # --- results -------------------------------------------------------------------------
    def finished(self, d: Delivery, result: SendResult) -> None:
        """Record ``result`` of one attempt of ``d``, and retry, settle or give up."""
        self.in_flight[d.channel] -= 1
        policy = self.config.channels[d.channel].retry
        last = result.final or d.attempt >= policy.attempts
        outcome = "delivered" if result.ok else ("failed" if last else "retrying")
        for p in d.alerts:
            self.outbox.delivery(self._record(p, d, outcome, result))
        if outcome == "retrying":
            self.stats["retried"] += 1
            wait = backoff_s(policy, d.attempt, result.retry_after_s, self.rng)
            self._schedule(d, self.now() + wait)
            return
        self.stats[outcome] += len(d.alerts)
        for p in d.alerts:
            if outcome == "failed":
                reason = result.error or f"status {result.status}"
                self.outbox.dead_letter(
                    self._dead(p, p.value, d.channel, reason, result.status, d.attempt)
                )
            self._settle(p, d.channel)

    def _settle(self, p: Pending, channel: str) -> None:
        self.settled.add((p.alert_id, channel))
        p.waiting.discard(channel)
        if p.waiting or self.pending.pop((p.tp, p.offset), None) is None:
            return  # more channels to go, or the partition was revoked meanwhile
        self.partitions[p.tp].finish(p.offset)

    def committable(self) -> dict[TP, int]:
        """Per partition, the offset to commit (one past the last alert that is done)."""
        return {tp: o.next for tp, o in self.partitions.items() if o.next is not None}

    @property
    def idle(self) -> bool:
        return not self.pending and not any(self.in_flight.values())

    # --- records -------------------------------------------------------------------------
    def _record(self, p: Pending, d: Delivery, outcome: str, r: SendResult) -> dict[str, Any]:
        return {
            "alert_id": p.alert_id,
            "budget_id": str(p.view.get("budget_id", "")),
            "channel": d.channel,
            "channel_type": self.config.channels[d.channel].type,
            "attempt": d.attempt,
            "outcome": outcome,
            "status_code": r.status,
            "latency_ms": float(r.latency_ms),
            "error": r.error,
            "digest": d.key if d.key != p.alert_id else None,
            "at": self.wall_us(),
        }

    def _dead(
        self,
        p: Pending | None,
        value: bytes,
        channel: str,
        reason: str,
        status: int | None,
        attempts: int,
    ) -> dict[str, Any]:
        return {
            "alert_id": p.alert_id if p else "",
            "budget_id": str(p.view.get("budget_id", "")) if p else "",
            "channel": channel,
            "channel_type": self.config.channels[channel].type if channel else "",
            "reason": reason,
            "status_code": status,
            "attempts": attempts,
            "value": value,
            "failed_at": self.wall_us(),
        }
