"""The dispatcher of `spendstream notify`, driven without Kafka or network: a fake clock,
an outbox that keeps records, and results scripted per attempt."""

from __future__ import annotations

import random
from typing import Any

import pytest

from spendstream.sinks.notify.channels import SendResult
from spendstream.sinks.notify.config import RetryPolicy, parse_config
from spendstream.sinks.notify.dispatch import Delivery, Dispatcher, backoff_s

TP = ("budget-alerts", 0)
SECRET = "0123456789abcdef0123"


def rules(hook: str = "", extra_channel: str = "") -> str:
    return f"""
channels:
  hook:
    type: webhook
    url: https://hooks.example/a
    secret: {SECRET}
    retry: {{attempts: 4, initial_s: 1, max_s: 8}}
    {hook}
  {extra_channel}
rules:
  - default: true
    channels: [hook{", other" if extra_channel else ""}]
"""


class Box:
    def __init__(self) -> None:
        self.deliveries: list[dict[str, Any]] = []
        self.dead: list[dict[str, Any]] = []

    def delivery(self, record: dict[str, Any]) -> None:
        self.deliveries.append(record)

    def dead_letter(self, record: dict[str, Any]) -> None:
        self.dead.append(record)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def ok() -> SendResult:
    return SendResult(
        ok=True, final=False, status=200, retry_after_s=None, error=None, latency_ms=3.0
    )


def fail(
    status: int | None = 500, final: bool = False, retry_after: float | None = None
) -> SendResult:
    return SendResult(ok=False, final=final, status=status, retry_after_s=retry_after,
                      error=f"HTTP {status}", latency_ms=5.0)  # fmt: skip


def make(text: str, **kw: Any) -> tuple[Dispatcher, Box, Clock]:
    box, clock = Box(), Clock()
    d = Dispatcher(parse_config(text), box, now=clock, wall_us=lambda: 1_700_000_000_000_000,
                   rng=random.Random(7), **kw)  # fmt: skip
    return d, box, clock


def alert(n: int, budget: str = "team-a") -> dict[str, Any]:
    return {"alert_id": f"{budget}:2026-11:t{n}", "budget_id": budget, "kind": "threshold",
            "severity": "warning", "action": "notify", "threshold_percent": "80"}  # fmt: skip


def test_delivered_alert_is_logged_then_committable() -> None:
    d, box, _ = make(rules())
    d.offer(TP, 5, alert(1), b"raw-1")
    assert d.committable() == {}
    (job,) = d.ready()
    assert (job.channel, job.key, job.attempt) == ("hook", "team-a:2026-11:t1", 1)
    d.finished(job, ok())
    assert [(r["outcome"], r["attempt"], r["status_code"]) for r in box.deliveries] == [
        ("delivered", 1, 200)
    ]
    assert box.deliveries[0]["digest"] is None
    assert d.committable() == {TP: 6} and d.idle and not box.dead


def test_retries_back_off_and_a_slow_alert_holds_back_the_offsets_behind_it() -> None:
    d, box, clock = make(rules())
    d.offer(TP, 0, alert(1), b"1")
    d.offer(TP, 1, alert(2), b"2")
    first, second = d.ready()
    d.finished(second, ok())
    d.finished(first, fail(500))
    assert d.committable() == {}  # offset 1 is done, offset 0 is not: nothing to commit
    assert d.ready() == []  # the retry waits: attempt 1 waits 0.5-1 s
    clock.t += 0.49
    assert d.ready() == []
    clock.t += 0.52
    (again,) = d.ready()
    assert again is first and again.attempt == 2
    d.finished(again, fail(503))
    clock.t += 0.99  # attempt 2 waits 1-2 s
    assert d.ready() == []
    clock.t += 1.02
    (third,) = d.ready()
    d.finished(third, ok())
    assert d.committable() == {TP: 2}
    outcomes = [(r["alert_id"][-2:], r["outcome"], r["attempt"]) for r in box.deliveries]
    assert outcomes == [("t2", "delivered", 1), ("t1", "retrying", 1), ("t1", "retrying", 2),
                        ("t1", "delivered", 3)]  # fmt: skip
    assert d.stats["retried"] == 2 and d.stats["delivered"] == 2


def test_final_answer_is_not_retried_and_goes_to_the_dead_letters() -> None:
    d, box, _ = make(rules())
    d.offer(TP, 0, alert(1), b"the-record")
    (job,) = d.ready()
    d.finished(job, fail(410, final=True))
    assert d.ready() == [] and d.committable() == {TP: 1}
    (dead,) = box.dead
    assert dead["channel"] == "hook" and dead["status_code"] == 410
    assert dead["reason"] == "HTTP 410" and dead["value"] == b"the-record"
    assert dead["attempts"] == 1 and dead["alert_id"] == "team-a:2026-11:t1"
    assert box.deliveries[-1]["outcome"] == "failed"


def test_last_attempt_gives_up() -> None:
    d, box, clock = make(rules())
    d.offer(TP, 0, alert(1), b"x")
    for attempt in range(1, 5):
        clock.t += 60
        (job,) = d.ready()
        assert job.attempt == attempt
        d.finished(job, fail(502))
    assert [r["outcome"] for r in box.deliveries] == ["retrying"] * 3 + ["failed"]
    assert len(box.dead) == 1 and d.committable() == {TP: 1}


def test_retry_after_is_waited_at_least() -> None:
    d, _, clock = make(rules())
    d.offer(TP, 0, alert(1), b"x")
    (job,) = d.ready()
    d.finished(job, fail(429, retry_after=30))
    clock.t += 29.9
    assert d.ready() == []
    assert 0 < d.next_due_s() <= 0.11
    clock.t += 0.11
    assert d.ready() == [job]


def test_backoff_is_exponential_with_jitter_and_capped() -> None:
    policy = RetryPolicy(initial_s=1, max_s=8, max_retry_after_s=60)
    rng = random.Random(1)
    for attempt, base in [(1, 1), (2, 2), (3, 4), (4, 8), (9, 8)]:
        waits = {backoff_s(policy, attempt, None, rng) for _ in range(50)}
        assert all(base / 2 <= w <= base for w in waits) and len(waits) > 40
    assert backoff_s(policy, 1, 3600, rng) == 60  # a huge Retry-After is capped


def test_settled_pairs_are_not_sent_again_on_replay() -> None:
    d, box, _ = make(rules(), done_before={("team-a:2026-11:t1", "hook")})
    d.offer(TP, 0, alert(1), b"x")
    d.offer(TP, 1, alert(2), b"y")
    (job,) = d.ready()
    assert job.key == "team-a:2026-11:t2"
    assert d.committable() == {TP: 1} and d.stats["skipped"] == 1
    d.finished(job, ok())
    assert d.committable() == {TP: 2}


def test_rate_limit_spreads_a_burst() -> None:
    d, _, clock = make(rules("rate_per_minute: 60\n    burst: 2"))
    for n in range(4):
        d.offer(TP, n, alert(n), b"x")
    first = d.ready()
    assert len(first) == 2
    for job in first:
        d.finished(job, ok())
    assert d.ready() == []
    clock.t += 1.0
    assert len(d.ready()) == 1
    clock.t += 1.0
    assert len(d.ready()) == 1


def test_in_flight_per_channel_is_bounded() -> None:
    d, _, _ = make(rules())
    for n in range(10):
        d.offer(TP, n, alert(n), b"x")
    running = d.ready()
    assert len(running) == 4 and d.ready() == []
    d.finished(running[0], ok())
    assert len(d.ready()) == 1


def test_digest_sends_one_message_for_the_alerts_of_its_window() -> None:
    d, box, clock = make(rules("digest_minutes: 5"))
    for n in range(3):
        d.offer(TP, n, alert(n), b"x")
        clock.t += 10
    assert d.ready() == []
    assert d.next_due_s() == pytest.approx(300 - 30)
    clock.t += 300
    (digest,) = d.ready()
    assert len(digest.alerts) == 3 and digest.key.startswith("digest-")
    d.finished(digest, ok())
    assert d.committable() == {TP: 3} and d.stats["digests"] == 1
    assert {r["digest"] for r in box.deliveries} == {digest.key}
    assert len(box.deliveries) == 3  # one log row per alert in the digest
    # the same alerts make the same key (a receiver dedupes a re-sent digest)
    d2, _, clock2 = make(rules("digest_minutes: 5"))
    for n in reversed(range(3)):
        d2.offer(TP, n, alert(n), b"x")
    clock2.t += 301
    assert d2.ready()[0].key == digest.key


def test_every_channel_must_settle_before_the_offset_commits() -> None:
    other = "other: {type: slack, url: https://hooks.slack.example/T/B/z}"
    d, box, _ = make(rules(extra_channel=other))
    d.offer(TP, 0, alert(1), b"x")
    jobs = {j.channel: j for j in d.ready()}
    assert set(jobs) == {"hook", "other"}
    d.finished(jobs["hook"], ok())
    assert d.committable() == {}
    d.finished(jobs["other"], fail(404, final=True))
    assert d.committable() == {TP: 1} and [x["channel"] for x in box.dead] == ["other"]


def test_undecodable_record_is_dead_lettered_and_passed() -> None:
    d, box, _ = make(rules())
    d.offer(TP, 0, None, b"\x00garbage")
    assert d.committable() == {TP: 1}
    assert (
        box.dead[0]["reason"] == "undecodable alert record"
        and box.dead[0]["value"] == b"\x00garbage"
    )


def test_revoked_partitions_are_forgotten() -> None:
    d, box, _ = make(rules())
    d.offer(TP, 0, alert(1), b"x")
    d.offer(("budget-alerts", 1), 0, alert(2, "team-b"), b"y")
    jobs: list[Delivery] = d.ready()
    d.forget([TP])
    for job in jobs:
        d.finished(job, ok())
    assert d.committable() == {("budget-alerts", 1): 1}
    assert len(box.deliveries) == 2  # what was sent is still logged
