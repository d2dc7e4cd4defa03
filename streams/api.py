"""The workers' HTTP API: budgets (create, read, update, delete), status, recent usage,
alerts (acknowledge, resolve) and the pre-flight check.

``BudgetApi`` holds the logic and answers ``(HTTP status, JSON body)``, so it is tested
without a web server; ``mount`` wires it into faust's web server. Reads come from local
state (the budget feed); changes are published to the compacted topics, which every
worker reads, so any worker can take any request. Changes need a bearer token; invalid
input gets a 4xx JSON error with the reason, never a 500.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any, cast

from pydantic import BaseModel, ValidationError

from spendstream.errors import UserError
from spendstream.schemas.budget import BudgetDefinition, BudgetError, validate_hierarchy
from spendstream.schemas.checks import CheckRequest
from spendstream.schemas.models import AlertAction, BudgetStatus, explain
from spendstream.schemas.money import plain

from .budget_feed import BudgetFeed
from .periods import budget_period
from .preflight import check, spent_from
from .pricing import Pricer, PricingError

log = logging.getLogger("spendstream.api")

Reply = tuple[int, Any]
#: publish a definition (or a tombstone for an id) with who did it and why (actor, note),
#: and an alert action; blocking calls
BudgetWriter = Callable[[BudgetDefinition | None, str, str, str | None], None]
ActionWriter = Callable[[AlertAction], None]
#: recent usage rows of a budget, newest first (None = no warehouse reachable)
UsageReader = Callable[[str, int], list[dict[str, Any]] | None]


#: request bodies above this get a JSON 413 (aiohttp's default ``client_max_size``)
MAX_BODY = 1024**2
#: actor of changes made with the single unnamed token (SPENDSTREAM_API_TOKEN_NAME's default)
DEFAULT_TOKEN_NAME = "api"
#: longest note a change may carry (as BudgetDefinition.note)
MAX_NOTE = 2000


def dump(model: BaseModel) -> dict[str, Any]:
    """JSON-ready dict; money is an exact decimal string such as "0.25" (never a float)."""
    return cast(dict[str, Any], jsonable(model.model_dump(mode="python")))


def jsonable(value: Any, exact: Callable[[Decimal], str] = plain) -> Any:
    """``value`` as plain JSON types, for anything pydantic or ClickHouse hands us.

    Decimals become exact strings (``exact``: shortest by default), also inside lists,
    tuples and maps; dates and times ISO text; NaN and infinities ``null`` (JSON has no
    such numbers, and ``json.dumps`` would write invalid ``NaN``); bytes UTF-8 text with
    undecodable bytes as ``\\xNN``; anything else (UUID, IP addresses) its text."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Decimal):
        return exact(value) if value.is_finite() else None
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", errors="backslashreplace")
    if isinstance(value, dict):
        return {_key(k, exact): jsonable(v, exact) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v, exact) for v in value]
    return str(value)


def _key(key: Any, exact: Callable[[Decimal], str]) -> str:
    """JSON object keys are strings: a map keyed by UUID, Decimal or a tuple still prints."""
    converted = jsonable(key, exact)
    return converted if isinstance(converted, str) else json.dumps(converted)


def alert_known(feed: BudgetFeed, alert_id: str) -> bool:
    """Whether ``alert_id`` ever fired (it is in some status's active alerts) or was already
    acted on. Acting on any other id would create an action for an alert that then is
    born acknowledged or resolved, and never shows as open."""
    if alert_id in feed.actions:
        return True
    return any(alert_id in s.active_alerts for s in feed.statuses.values())


def error(status: int, message: str, **extra: Any) -> Reply:
    return status, {"error": message, **extra}


class BudgetApi:
    def __init__(
        self,
        feed: BudgetFeed,
        pricer: Pricer,
        tokens: str | Mapping[str, str],
        write_budget: BudgetWriter,
        write_action: ActionWriter,
        read_usage: UsageReader | None = None,
    ) -> None:
        self.feed = feed
        self.registry = feed.registry
        self.pricer = pricer
        #: token -> name; a plain string is the single unnamed token (SPENDSTREAM_API_TOKEN)
        self.tokens = (
            dict(tokens)
            if not isinstance(tokens, str)
            else ({tokens: DEFAULT_TOKEN_NAME} if tokens else {})
        )
        self.write_budget = write_budget
        self.write_action = write_action
        self.read_usage = read_usage

    # --- helpers -------------------------------------------------------------------------
    def authenticate(self, header: str | None) -> tuple[str, None] | tuple[None, Reply]:
        """(the token's name, None) when the caller may change things, else (None, the
        error reply). The name is the actor of the change: a client never picks it."""
        if not self.tokens:
            return None, error(403, "this API is read-only: set SPENDSTREAM_API_TOKEN or "
                                    "SPENDSTREAM_API_TOKENS on the workers")  # fmt: skip
        scheme, _, given = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            return None, error(401, "missing 'Authorization: Bearer <token>' header")
        offered = given.strip().encode()
        found: str | None = None
        for token, name in self.tokens.items():  # every one: no early exit to time
            if hmac.compare_digest(offered, token.encode()):
                found = name
        if found is None:
            return None, error(401, "invalid token")
        return found, None

    def authorize(self, header: str | None) -> Reply | None:
        """None when the caller may change things, else the error reply."""
        return self.authenticate(header)[1]

    @staticmethod
    def parse(body: bytes) -> Any:
        try:
            return json.loads(body or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"request body is not valid JSON: {exc}") from None
        except RecursionError:
            raise ApiError(400, "request body is nested too deeply") from None

    def statuses_of(self, budget_id: str) -> list[BudgetStatus]:
        resolved = self.feed.resolved()
        found = [s for s in self.feed.statuses.values() if s.budget_id == budget_id]
        return [
            s.model_copy(
                update={"active_alerts": [a for a in s.active_alerts if a not in resolved]}
            )
            for s in sorted(found, key=lambda s: s.period_start)
        ]

    # --- budgets -------------------------------------------------------------------------
    def list_budgets(self) -> Reply:
        return 200, [dump(b) for b in sorted(self.registry.all(), key=lambda b: b.budget_id)]

    def get_budget(self, budget_id: str) -> Reply:
        budget = self.registry.get(budget_id)
        if budget is None:
            return error(404, f"no budget '{budget_id}'")
        return 200, dump(budget)

    def put_budget(self, budget_id: str | None, body: bytes, auth: str | None) -> Reply:
        """Create (POST, ``budget_id`` None) or create-or-replace (PUT) a budget."""
        actor, denied = self.authenticate(auth)
        if denied:
            return denied
        data = self.parse(body)
        if not isinstance(data, dict):
            return error(400, "expected a JSON object with the budget definition")
        data["actor"] = actor  # the token's name, whatever the body says
        if budget_id is not None and data.setdefault("budget_id", budget_id) != budget_id:
            return error(400, f"budget_id in the body ({data['budget_id']}) is not "
                              f"the one in the path ({budget_id})")  # fmt: skip
        data["updated_at"] = datetime.now(UTC).isoformat()
        try:
            budget = BudgetDefinition.model_validate(data)
        except ValidationError as exc:
            return error(422, explain(exc, "budget"))
        exists = self.registry.get(budget.budget_id) is not None
        if budget_id is None and exists:
            return error(409, f"budget '{budget.budget_id}' exists; PUT /budgets/"
                              f"{budget.budget_id} replaces it")  # fmt: skip
        known = {b.budget_id: b for b in self.registry.all()}
        known[budget.budget_id] = budget
        try:
            validate_hierarchy(known)
        except BudgetError as exc:
            return error(422, str(exc))
        self.write_budget(budget, budget.budget_id, actor or "", budget.note)
        self.registry.put(budget)  # read-your-writes on this worker; the feed confirms it
        return (200 if exists else 201), dump(budget)

    def delete_budget(self, budget_id: str, auth: str | None, body: bytes = b"") -> Reply:
        """Delete (a tombstone); an optional body ``{"note": "..."}`` says why. The actor
        and the note travel as headers of the tombstone, which has no value."""
        actor, denied = self.authenticate(auth)
        if denied:
            return denied
        data = self.parse(body) or {}
        if not isinstance(data, dict) or set(data) - {"note"}:
            return error(400, 'expected no body or a JSON object such as {"note": "why"}')
        note = data.get("note")
        if note is not None and (not isinstance(note, str) or len(note) > MAX_NOTE):
            return error(422, f"note must be text of at most {MAX_NOTE} characters")
        if self.registry.get(budget_id) is None:
            return error(404, f"no budget '{budget_id}'")
        children = sorted(b.budget_id for b in self.registry.all() if b.parent_id == budget_id)
        if children:
            return error(409, f"budget '{budget_id}' has children {children}: delete or "
                              "re-parent them first")  # fmt: skip
        self.write_budget(None, budget_id, actor or "", (note or "").strip() or None)
        self.registry.delete(budget_id)
        return 200, {"deleted": budget_id, "note": "matching stops; its history stays"}

    # --- status, usage, alerts -----------------------------------------------------------
    def status(self, budget_id: str) -> Reply:
        budget = self.registry.get(budget_id)
        statuses = self.statuses_of(budget_id)
        if budget is None and not statuses:
            return error(404, f"no budget '{budget_id}'")
        current = budget_period(budget, datetime.now(UTC)) if budget else None
        return 200, {
            "budget_id": budget_id,
            "current_period": current.key if current else None,
            "periods": [dump(s) for s in statuses],
        }

    def usage(self, budget_id: str, limit: int) -> Reply:
        if self.registry.get(budget_id) is None and not self.statuses_of(budget_id):
            return error(404, f"no budget '{budget_id}'")
        rows = self.read_usage(budget_id, limit) if self.read_usage else None
        if rows is None:
            return error(503, "no ClickHouse reachable: start the sink (`spendstream sink`)")
        return 200, {"budget_id": budget_id, "usage": rows}

    def alert_action(self, alert_id: str, action: str, body: bytes, auth: str | None) -> Reply:
        denied = self.authorize(auth)
        if denied:
            return denied
        if action not in ("acknowledge", "resolve"):
            return error(404, f"unknown alert action '{action}' (acknowledge or resolve)")
        data = self.parse(body) or {}
        if not isinstance(data, dict):
            return error(400, 'expected a JSON object such as {"actor": "ana"}')
        budget_id = alert_id.split(":", 1)[0]
        if not alert_known(self.feed, alert_id):
            return error(404, f"no alert '{alert_id}': only alerts that fired can be "
                              "acknowledged or resolved")  # fmt: skip
        try:
            act = AlertAction(alert_id=alert_id, budget_id=budget_id, action=action,
                              actor=data.get("actor") or "api", note=data.get("note"),
                              at=datetime.now(UTC))  # fmt: skip
        except ValidationError as exc:
            return error(422, explain(exc, "alert action"))
        self.write_action(act)
        self.feed.actions[alert_id] = act
        return 200, dump(act)

    # --- pre-flight ----------------------------------------------------------------------
    def check(self, body: bytes) -> Reply:
        data = self.parse(body)
        if not isinstance(data, dict):
            return error(400, "expected a JSON object with estimated_cost or model and tokens")
        try:
            request = CheckRequest.model_validate(data)
            result = check(request, self.registry, spent_from(self.feed.statuses), self.pricer,
                           datetime.now(UTC), getattr(self.feed, "fx", None))  # fmt: skip
        except ValidationError as exc:
            return error(422, explain(exc, "check"))
        except PricingError as exc:
            return error(422, str(exc))
        return 200, dump(result)


class ApiError(UserError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def guarded(handler: Callable[[], Reply | Awaitable[Reply]]) -> Reply:
    """Run a handler; bad input becomes its 4xx, anything else a JSON 500 that is logged."""
    try:
        result = handler()
        if asyncio.iscoroutine(result):
            result = await result
        return result  # type: ignore[return-value]
    except ApiError as exc:
        return error(exc.status, str(exc))
    except Exception as exc:  # a bug or an outage, not the caller's input
        log.exception("API request failed")
        return error(500, f"internal error: {type(exc).__name__}: {exc}")


async def read_body(request: Any) -> bytes:
    """The request body; one over ``MAX_BODY`` is the caller's error as JSON (aiohttp would
    answer its own plain-text 413)."""
    from aiohttp import web

    try:
        return cast(bytes, await request.read())
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, f"request body is larger than {MAX_BODY} bytes") from None


LOOPBACK = ("127.0.0.1", "localhost", "[::1]", "::1")


def browser_refusal(headers: Any, bind: str = "127.0.0.1") -> Reply | None:
    """Why a request looks like a web page's (and is refused), or None.

    The API is for programs and people at a terminal, never for a page in someone's
    browser: a cross-origin request carries ``Origin`` (or a cross-site
    ``Sec-Fetch-Site``); a DNS-rebinding page reaches a loopback port under its own host
    name, so on a loopback bind the ``Host`` must be a loopback name."""
    if headers.get("Origin") is not None:
        return error(403, "cross-origin requests are refused")
    if headers.get("Sec-Fetch-Site", "none") not in ("none", "same-origin"):
        return error(403, "cross-site requests are refused")
    if bind in LOOPBACK:
        host = (headers.get("Host") or "").rsplit(":", 1)[0]
        if host not in LOOPBACK:
            return error(403, f"Host must be a loopback name on a loopback bind, not '{host}'")
    return None


def mount(app: Any, api: BudgetApi, bind: str = "127.0.0.1") -> None:
    """Register the routes on a faust app's web server (``bind``: its listen address)."""
    from faust.web import View

    def respond(view: Any, reply: Reply) -> Any:
        status, body = reply
        return view.json(body, status=status)

    async def blocking(fn: Callable[..., Reply], *args: Any) -> Reply:
        # writes flush to Kafka: keep them off the event loop
        return await asyncio.to_thread(fn, *args)

    async def with_body(request: Any, fn: Callable[[bytes], Reply]) -> Reply:
        # read inside ``guarded``, so an oversized body is a JSON 413 like any other error
        return await blocking(fn, await read_body(request))

    def auth(request: Any) -> str | None:
        return request.headers.get("Authorization")

    async def serve(request: Any, handler: Callable[[], Reply | Awaitable[Reply]]) -> Reply:
        return browser_refusal(request.headers, bind) or await guarded(handler)

    @app.page("/budgets")
    class Budgets(View):
        async def get(self, request: Any) -> Any:
            return respond(self, await serve(request, api.list_budgets))

        async def post(self, request: Any) -> Any:
            return respond(self, await serve(request, lambda: with_body(
                request, lambda body: api.put_budget(None, body, auth(request)))))  # fmt: skip

    @app.page("/budgets/{budget_id}")
    class OneBudget(View):
        async def get(self, request: Any, budget_id: str) -> Any:
            return respond(self, await serve(request, lambda: api.get_budget(budget_id)))

        async def put(self, request: Any, budget_id: str) -> Any:
            return respond(self, await serve(request, lambda: with_body(
                request, lambda body: api.put_budget(budget_id, body, auth(request)))))  # fmt: skip

        async def delete(self, request: Any, budget_id: str) -> Any:
            return respond(self, await serve(request, lambda: with_body(
                request, lambda body: api.delete_budget(budget_id, auth(request), body))))  # fmt: skip

    @app.page("/budgets/{budget_id}/status")
    class Status(View):
        async def get(self, request: Any, budget_id: str) -> Any:
            return respond(self, await serve(request, lambda: api.status(budget_id)))

    @app.page("/budgets/{budget_id}/usage")
    class Usage(View):
        async def get(self, request: Any, budget_id: str) -> Any:
            def run() -> Reply:
                raw = request.query.get("limit", "50")
                if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= 1000:
                    return error(400, "limit must be a whole number from 1 to 1000")
                return api.usage(budget_id, int(raw))

            return respond(self, await serve(request, lambda: blocking(run)))

    @app.page("/alerts/{alert_id}/{action}")
    class Alerts(View):
        async def post(self, request: Any, alert_id: str, action: str) -> Any:
            return respond(self, await serve(request, lambda: with_body(
                request, lambda body: api.alert_action(alert_id, action, body,
                                                       auth(request)))))  # fmt: skip

    @app.page("/check")
    class Check(View):
        async def post(self, request: Any) -> Any:
            async def run() -> Reply:
                return api.check(await read_body(request))  # local state only: no thread

            return respond(self, await serve(request, run))
