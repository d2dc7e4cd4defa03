"""Shared fixtures: event builders for unit tests."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from spendstream.schemas.models import Attributes, LlmUsage, UsageEvent


def llm_event(
    event_id: str = "e-1",
    *,
    provider: str = "openai",
    model: str = "gpt-4o",
    when: datetime | None = None,
    input_tokens: int = 1000,
    output_tokens: int = 500,
    cache_read_tokens: int = 0,
    cache_write_tokens: int = 0,
    **attrs: Any,
) -> UsageEvent:
    return UsageEvent(
        event_id=event_id,
        occurred_at=when or datetime(2026, 11, 15, 12, 0, tzinfo=UTC),
        source="llm",
        attributes=Attributes(**attrs),
        payload=LlmUsage(
            provider=provider,
            model=model,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cache_read_tokens=cache_read_tokens,
            cache_write_tokens=cache_write_tokens,
        ),
    )


@pytest.fixture
def make_llm_event():
    return llm_event


@pytest.fixture(scope="session")
def chdb_dir(tmp_path_factory: pytest.TempPathFactory):
    """chDB admits one data directory per process: the whole session shares this one."""
    return tmp_path_factory.mktemp("chdb")


def ctrl_c_reaches() -> None:
    """``preexec_fn`` of a child a test ends with SIGINT, as Ctrl-C in a terminal would: a
    shell starts background jobs with SIGINT ignored and children inherit that (CPython
    then installs no KeyboardInterrupt handler), so a suite run as a background job saw
    its followers ignore the test's Ctrl-C."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
