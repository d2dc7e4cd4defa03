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
