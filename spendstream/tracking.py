"""Track LLM calls where they happen: a context manager and a decorator.

    with track_llm(publisher, attributes={"team": "ml"}) as call:
        call.record(client.chat.completions.create(...))

    @track_llm(publisher, attributes={"feature": "summaries"})
    async def summarize(text): return await client.messages.create(...)

The response is turned into a usage event by the matching builder (auto-detected, or
``source=`` to force one) and published. Tracking never breaks the caller: a payload that
cannot be read or a publish that fails is logged and counted, and the response is returned
unchanged. A call that raises publishes nothing (nothing was billed that we can see).

Batch API results are tracked the same way, one result line per ``record``: an OpenAI
Batch API output line, an Anthropic Message Batches result or a Gemini batch output line
becomes an event marked batch (priced at batch rates); a line the provider did not bill
(errored, canceled, expired) is counted in ``not_billed`` and publishes nothing.

A decorated function may live as long as the process, so the tracker keeps counts and only
the ``recent`` last events and errors (for a look in a debugger or a test), never all.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

from spendstream.builders import BuilderError, NotBilled, build
from spendstream.schemas.models import UsageEvent

log = logging.getLogger("spendstream.tracking")
F = TypeVar("F", bound=Callable[..., Any])


class Publisher(Protocol):
    def publish(self, event: UsageEvent) -> None: ...


class track_llm:  # noqa: N801  (reads like a function at the call site)
    def __init__(
        self,
        publisher: Publisher,
        *,
        attributes: Mapping[str, Any] | None = None,
        source: str | None = None,
        recent: int = 100,
        **builder_kwargs: Any,
    ) -> None:
        self.publisher = publisher
        self.attributes = dict(attributes or {})
        self.source = source
        self.builder_kwargs = builder_kwargs
        #: the last ``recent`` events published and errors met; totals in the counters
        self.events: deque[UsageEvent] = deque(maxlen=recent)
        self.errors: deque[str] = deque(maxlen=recent)
        self.tracked = 0
        self.failed = 0
        self.not_billed = 0

    # --- context manager ------------------------------------------------------------------
    def __enter__(self) -> track_llm:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    async def __aenter__(self) -> track_llm:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def record(self, response: Any, **attributes: Any) -> UsageEvent | None:
        """Publish the usage in ``response``; returns the event (None if it failed)."""
        try:
            event = build(response, self.source,
                          attributes={**self.attributes, **attributes}, **self.builder_kwargs)  # fmt: skip
        except NotBilled as exc:  # a failed batch request: nothing billed, nothing wrong
            self.not_billed += 1
            log.info("usage not tracked: %s", exc)
            return None
        except (BuilderError, ValueError) as exc:
            self.failed += 1
            self.errors.append(str(exc))
            log.warning("usage not tracked: %s", exc)
            return None
        try:
            self.publisher.publish(event)
        except Exception as exc:  # never fail the caller's LLM call over tracking
            self.failed += 1
            self.errors.append(str(exc))
            log.warning("usage of %s not published: %s", event.event_id, exc)
            return None
        self.tracked += 1
        self.events.append(event)
        return event

    # --- decorator --------------------------------------------------------------------------
    def __call__(self, func: F) -> F:
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                response = await func(*args, **kwargs)
                self.record(response)
                return response

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            response = func(*args, **kwargs)
            self.record(response)
            return response

        return wrapper  # type: ignore[return-value]
