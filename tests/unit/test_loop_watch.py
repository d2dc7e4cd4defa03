"""The loop watch logs, once per stall, where a loop that stopped coming round is stuck."""

from __future__ import annotations

import logging
import threading
import time

from spendstream.loop_watch import LoopWatch


def test_a_stall_is_logged_once_with_the_stack_and_the_recovery_too(caplog) -> None:
    now = [100.0]
    watch = LoopWatch("sink", stall_s=60, clock=lambda: now[0])
    watch.beat()
    now[0] = 150.0
    assert watch.check() is None  # within the allowance
    now[0] = 170.0
    with caplog.at_level(logging.INFO, logger="spendstream.watch"):
        message = watch.check()
        assert message is not None and "has not come round for 70 s" in message
        assert "test_a_stall_is_logged_once" in message  # the watched thread's stack
        now[0] = 200.0
        assert watch.check() is None  # the same stall is reported once
        watch.beat()
        assert watch.check() == "sink: the loop came round again"
        now[0] = 300.0
        assert watch.check() is not None  # a new stall is reported again
    assert [r.levelname for r in caplog.records] == ["WARNING", "INFO", "WARNING"]


def test_the_watch_thread_reports_a_loop_blocked_in_a_call(caplog) -> None:
    release = threading.Event()
    found: list[str] = []

    def blocked_loop() -> None:
        watch = LoopWatch("loop", stall_s=0.2, check_s=0.05).start()
        release.wait(5)  # stands for a call that does not return
        watch.stop()

    with caplog.at_level(logging.WARNING, logger="spendstream.watch"):
        thread = threading.Thread(target=blocked_loop)
        thread.start()
        deadline = time.monotonic() + 5
        while not found and time.monotonic() < deadline:
            found = [r.getMessage() for r in caplog.records]
            time.sleep(0.05)
        release.set()
        thread.join()
    assert found and "release.wait(5)" in found[0]


def test_the_sink_beats_its_watch_every_round(monkeypatch) -> None:
    from tests.unit.test_sink_loop import FakeClient, FakeConsumer, FakeProducer, Msg, sink

    consumer = FakeConsumer([("toy", 0)], [[Msg("toy", 0, 0, b"a")], [], []])
    s = sink(consumer, FakeClient(), FakeProducer())
    beats: list[float] = []
    real = LoopWatch.beat

    def counting(self: LoopWatch) -> None:
        beats.append(self.clock())
        real(self)

    monkeypatch.setattr(LoopWatch, "beat", counting)
    s.run()
    assert len(beats) >= 4  # at start, then once per round (three recorded batches)
    assert s._watch is not None and s._watch._stop.is_set()  # stopped with the loop
