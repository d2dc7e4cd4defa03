import asyncio

import pytest

from spendstream.tracking import track_llm
from tests.unit.test_builders import ANTHROPIC, OPENAI_CHAT


class Collect:
    def __init__(self, fail: bool = False) -> None:
        self.events = []
        self.fail = fail

    def publish(self, event):
        if self.fail:
            raise RuntimeError("broker down")
        self.events.append(event)


def test_context_manager_publishes_the_recorded_call():
    pub = Collect()
    with track_llm(pub, attributes={"team": "ml"}) as call:
        call.record(OPENAI_CHAT, feature="search")
    (event,) = pub.events
    assert event.attributes.team == "ml" and event.attributes.feature == "search"
    assert event.payload.cache_read_tokens == 1024


def test_decorator_sync_and_async():
    pub = Collect()

    @track_llm(pub, attributes={"project": "bot"})
    def ask():
        return ANTHROPIC

    @track_llm(pub)
    async def ask_async():
        return OPENAI_CHAT

    assert ask() is ANTHROPIC
    assert asyncio.run(ask_async()) is OPENAI_CHAT
    assert [e.payload.provider for e in pub.events] == ["anthropic", "openai"]
    assert pub.events[0].attributes.project == "bot"


def test_tracking_never_breaks_the_call():
    pub = Collect(fail=True)
    tracker = track_llm(pub)

    @tracker
    def ask():
        return OPENAI_CHAT

    assert ask() is OPENAI_CHAT  # publish failed, call still succeeds
    assert "broker down" in tracker.errors[0]
    unreadable = track_llm(Collect())
    assert unreadable.record({"something": "else"}) is None
    assert "--source" in unreadable.errors[0]


def test_a_failing_call_publishes_nothing():
    pub = Collect()

    @track_llm(pub)
    def ask():
        raise TimeoutError("upstream")

    with pytest.raises(TimeoutError):
        ask()
    assert pub.events == []


def test_a_long_lived_tracker_keeps_counts_not_every_event():
    """A decorated function lives as long as the process: its tracker must not grow."""
    pub = Collect()
    tracker = track_llm(pub, recent=5)

    @tracker
    def ask():
        return OPENAI_CHAT

    for _ in range(1000):
        ask()
    assert len(pub.events) == 1000  # every call was published
    assert tracker.tracked == 1000 and tracker.failed == 0
    assert len(tracker.events) == 5 and tracker.events[-1] is pub.events[-1]
    failing = track_llm(Collect(fail=True), recent=3)
    for _ in range(10):
        failing.record(OPENAI_CHAT)
    assert failing.failed == 10 and len(failing.errors) == 3
