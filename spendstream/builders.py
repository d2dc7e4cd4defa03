"""Turn real provider payloads into usage events: one call per API response or run.

Each builder accepts the payload as the HTTP API returns it (a dict) or as an SDK object
(anything with ``model_dump()``/``to_dict()``), and normalizes token accounting to our
contract: ``input_tokens`` is the whole prompt including cache reads and writes, and
``output_tokens`` includes reasoning/thinking tokens. Providers differ:

* OpenAI (Chat Completions, Responses) and OpenAI-compatible APIs: ``prompt_tokens`` /
  ``input_tokens`` already include cached tokens; reasoning is inside completion tokens.
* Anthropic Messages: ``input_tokens`` EXCLUDES ``cache_read_input_tokens`` and
  ``cache_creation_input_tokens``; we add them back.
  Its ``cache_creation`` splits the writes by cache lifetime (``ephemeral_5m_input_tokens``
  at 1.25x the input price, ``ephemeral_1h_input_tokens`` at 2x): we keep the 1-hour part
  apart. Bedrock and Vertex AI serve Anthropic models with the same usage (pass
  ``provider``).
* Google Gemini: ``promptTokenCount`` includes ``cachedContentTokenCount``;
  ``thoughtsTokenCount`` is billed as output but reported apart from candidates.
* The tier that served a call (OpenAI's ``service_tier`` on the response, Anthropic's on
  its usage) is kept: tiers are priced at their own rates.
* Batch APIs: a line of a results file (OpenAI Batch API output, Anthropic Message
  Batches results, Gemini API / Vertex AI batch prediction output) is the response it
  wraps, marked ``batch`` (priced at batch rates). A request that failed, was canceled or
  expired was not billed: ``NotBilled``, which callers skip rather than report as bad.
Money that arrives as a JSON float in a provider's own payload (Apify's
``usageTotalUsd``, which we cannot ask Apify to quote) goes through ``str`` into Decimal,
never through float arithmetic. Our own usage events are different: their amounts must
be quoted, and a float is refused (schemas/models.py).

A usage event given as a dict (a line of ``spendstream publish``) may state its time
relative to publishing: ``"occurred_at": "now"`` or ``"now-45m"`` (units s, m, h, d). The
shipped examples use it, so they fall in open budget periods on any day.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from pydantic import ValidationError

from spendstream.errors import UserError
from spendstream.schemas.models import (
    ApifyRun,
    Attributes,
    LlmUsage,
    UsageEvent,
    WorkflowRun,
    explain,
)


class BuilderError(UserError, ValueError):
    """The payload is not what the builder expects; the message names the field."""


class NotBilled(BuilderError):
    """A batch result line for a request the provider did not bill (errored, canceled,
    expired): nothing to publish, and nothing wrong with the line."""


def as_dict(payload: Any) -> dict[str, Any]:
    if isinstance(payload, Mapping):
        return dict(payload)
    for method in ("model_dump", "to_dict", "dict"):
        if hasattr(payload, method):
            return dict(getattr(payload, method)())
    raise BuilderError(f"expected a dict or an SDK response object, got {type(payload).__name__}")


def _get(data: Mapping[str, Any] | None, path: str, default: Any = None) -> Any:
    node: Any = data
    for part in path.split("."):
        if not isinstance(node, Mapping) or node.get(part) is None:
            return default
        node = node[part]
    return node


def _require(data: Mapping[str, Any], path: str, what: str) -> Any:
    value = _get(data, path)
    if value is None:
        raise BuilderError(f"{what}: missing '{path}'")
    return value


def _int(data: Mapping[str, Any] | None, path: str, what: str) -> int:
    value = _get(data, path, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BuilderError(f"{what}: '{path}' must be a non-negative integer, got {value!r}")
    return value


def _decimal(value: Any, field: str, what: str) -> Decimal:
    if isinstance(value, Decimal):
        return value
    try:
        return Decimal(str(value))
    except (InvalidOperation, ValueError):
        raise BuilderError(f"{what}: '{field}' is not a number: {value!r}") from None


def _when(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC)  # unix seconds (OpenAI 'created')
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise BuilderError(f"'{value}' is not an ISO timestamp") from None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    raise BuilderError(f"unsupported timestamp {value!r}")


def _event(
    source: str,
    payload: Any,
    *,
    event_id: str | None,
    default_id: str | None,
    occurred_at: datetime | None,
    default_time: datetime | None,
    attributes: Attributes | Mapping[str, Any] | None,
) -> UsageEvent:
    attrs = attributes if isinstance(attributes, Attributes) else Attributes(**(attributes or {}))
    try:
        return UsageEvent(
            event_id=event_id or default_id or str(uuid.uuid4()),
            occurred_at=occurred_at or default_time or datetime.now(UTC),
            source=source,
            attributes=attrs,
            payload=payload,
        )
    except ValidationError as exc:
        raise BuilderError(explain(exc)) from None


def _llm(what: str, **fields: Any) -> LlmUsage:
    try:
        return LlmUsage(**fields)
    except ValidationError as exc:
        raise BuilderError(f"{what}: {explain(exc)}") from None


# --- LLM APIs ------------------------------------------------------------------------------
def _tier(data: Mapping[str, Any] | None, path: str, what: str) -> str | None:
    """A service tier as the provider reports it (None when absent)."""
    value = _get(data, path)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BuilderError(f"{what}: '{path}' must be a string, got {value!r}")
    return value


def from_openai_chat(
    resp: Any,
    *,
    provider: str = "openai",
    batch: bool = False,
    event_id: str | None = None,
    occurred_at: datetime | None = None,
    attributes: Attributes | Mapping[str, Any] | None = None,
) -> UsageEvent:
    """OpenAI Chat Completions (and OpenAI-compatible APIs: pass ``provider``)."""
    what = f"{provider} chat completion"
    data = as_dict(resp)
    usage = _require(data, "usage", what)
    payload = _llm(
        what,
        provider=provider,
        model=_require(data, "model", what),
        operation="chat",
        input_tokens=_int(usage, "prompt_tokens", what),
        cache_read_tokens=_int(usage, "prompt_tokens_details.cached_tokens", what),
        input_audio_tokens=_int(usage, "prompt_tokens_details.audio_tokens", what),
        output_tokens=_int(usage, "completion_tokens", what),
        reasoning_tokens=_int(usage, "completion_tokens_details.reasoning_tokens", what),
        output_audio_tokens=_int(usage, "completion_tokens_details.audio_tokens", what),
        request_id=data.get("id"),
        service_tier=_tier(data, "service_tier", what),
        batch=batch,
    )
    return _event("llm", payload, event_id=event_id,
                  default_id=f"{provider}:{data['id']}" if data.get("id") else None,
                  occurred_at=occurred_at, default_time=_when(data.get("created")),
                  attributes=attributes)  # fmt: skip


def from_openai_compatible(resp: Any, provider: str, **kwargs: Any) -> UsageEvent:
    """Mistral, Groq, xAI, DeepSeek, … speak the Chat Completions usage format."""
    return from_openai_chat(resp, provider=provider, **kwargs)


def from_openai_responses(
    resp: Any,
    *,
    batch: bool = False,
    event_id: str | None = None,
    occurred_at: datetime | None = None,
    attributes: Attributes | Mapping[str, Any] | None = None,
) -> UsageEvent:
    """OpenAI Responses API: input_tokens include cached; output_tokens include reasoning."""
    what = "openai response"
    data = as_dict(resp)
    usage = _require(data, "usage", what)
    payload = _llm(
        what,
        provider="openai",
        model=_require(data, "model", what),
        operation="responses",
        input_tokens=_int(usage, "input_tokens", what),
        cache_read_tokens=_int(usage, "input_tokens_details.cached_tokens", what),
        output_tokens=_int(usage, "output_tokens", what),
        reasoning_tokens=_int(usage, "output_tokens_details.reasoning_tokens", what),
        request_id=data.get("id"),
        service_tier=_tier(data, "service_tier", what),
        batch=batch,
    )
    return _event("llm", payload, event_id=event_id,
                  default_id=f"openai:{data['id']}" if data.get("id") else None,
                  occurred_at=occurred_at, default_time=_when(data.get("created_at")),
                  attributes=attributes)  # fmt: skip


def from_openai_embedding(
    resp: Any,
    *,
    provider: str = "openai",
    batch: bool = False,
    event_id: str | None = None,
    occurred_at: datetime | None = None,
    attributes: Attributes | Mapping[str, Any] | None = None,
) -> UsageEvent:
    what = f"{provider} embedding"
    data = as_dict(resp)
    usage = _require(data, "usage", what)
    payload = _llm(what, provider=provider, model=_require(data, "model", what),
                   operation="embedding", input_tokens=_int(usage, "prompt_tokens", what),
                   batch=batch)  # fmt: skip
    return _event("llm", payload, event_id=event_id, default_id=None, occurred_at=occurred_at,
                  default_time=None, attributes=attributes)  # fmt: skip


def from_openai_image(
    resp: Any,
    model: str,
    *,
    size: str | None = None,
    count: int | None = None,
    event_id: str | None = None,
    occurred_at: datetime | None = None,
    attributes: Attributes | Mapping[str, Any] | None = None,
) -> UsageEvent:
    """Image generation: priced per image (catalog), plus tokens when the API reports them."""
    what = "openai image generation"
    data = as_dict(resp)
    images = count if count is not None else len(_get(data, "data", []) or [])
    usage = data.get("usage") or {}
    payload = _llm(what, provider="openai", model=model, operation="image", images=images,
                   image_size=size, input_tokens=_int(usage, "input_tokens", what),
                   output_tokens=_int(usage, "output_tokens", what))  # fmt: skip
    return _event("llm", payload, event_id=event_id, default_id=None, occurred_at=occurred_at,
                  default_time=_when(data.get("created")), attributes=attributes)  # fmt: skip


def from_anthropic_message(
    resp: Any,
    *,
    provider: str = "anthropic",
    model: str | None = None,
    batch: bool = False,
    event_id: str | None = None,
    occurred_at: datetime | None = None,
    attributes: Attributes | Mapping[str, Any] | None = None,
) -> UsageEvent:
    """Anthropic Messages: its input_tokens exclude cache reads and writes; add them back.
    Cache writes are split by lifetime when ``usage.cache_creation`` says so (an older
    payload without it: all 5-minute writes). Bedrock or Vertex AI: pass ``provider`` (and
    ``model`` when the body does not name it)."""
    what = f"{provider} anthropic message"
    data = as_dict(resp)
    usage = _require(data, "usage", what)
    uncached = _int(usage, "input_tokens", what)
    read = _int(usage, "cache_read_input_tokens", what)
    written = _int(usage, "cache_creation_input_tokens", what)
    written_1h = 0
    if isinstance(usage.get("cache_creation"), Mapping):
        five = _int(usage, "cache_creation.ephemeral_5m_input_tokens", what)
        written_1h = _int(usage, "cache_creation.ephemeral_1h_input_tokens", what)
        if "cache_creation_input_tokens" not in usage:
            written = five + written_1h
        elif five + written_1h != written:
            raise BuilderError(
                f"{what}: cache_creation ({five} 5-minute + {written_1h} 1-hour tokens) does "
                f"not add up to cache_creation_input_tokens ({written})"
            )
    tier = _tier(usage, "service_tier", what)
    payload = _llm(what, provider=provider, model=model or _require(data, "model", what),
                   input_tokens=uncached + read + written, cache_read_tokens=read,
                   cache_write_tokens=written, cache_write_1h_tokens=written_1h,
                   output_tokens=_int(usage, "output_tokens", what), request_id=data.get("id"),
                   service_tier=tier, batch=batch or tier == "batch")  # fmt: skip
    return _event("llm", payload, event_id=event_id,
                  default_id=f"{provider}:{data['id']}" if data.get("id") else None,
                  occurred_at=occurred_at, default_time=None, attributes=attributes)  # fmt: skip


def from_gemini(
    resp: Any,
    model: str | None = None,
    *,
    provider: str = "google",
    batch: bool = False,
    event_id: str | None = None,
    occurred_at: datetime | None = None,
    attributes: Attributes | Mapping[str, Any] | None = None,
) -> UsageEvent:
    """Gemini generateContent: thinking tokens are billed as output, reported apart."""
    what = "gemini response"
    data = as_dict(resp)
    meta = _require(data, "usageMetadata", what)
    thoughts = _int(meta, "thoughtsTokenCount", what)
    payload = _llm(what, provider=provider,
                   model=model or _require(data, "modelVersion", what),
                   input_tokens=_int(meta, "promptTokenCount", what),
                   cache_read_tokens=_int(meta, "cachedContentTokenCount", what),
                   output_tokens=_int(meta, "candidatesTokenCount", what) + thoughts,
                   reasoning_tokens=thoughts, request_id=data.get("responseId"),
                   batch=batch)  # fmt: skip
    return _event("llm", payload, event_id=event_id,
                  default_id=f"{provider}:{data['responseId']}" if data.get("responseId") else None,
                  occurred_at=occurred_at, default_time=None, attributes=attributes)  # fmt: skip


# --- batch API results -------------------------------------------------------------------------
def from_openai_batch_line(
    line: Any,
    *,
    provider: str = "openai",
    event_id: str | None = None,
    occurred_at: datetime | None = None,
    attributes: Attributes | Mapping[str, Any] | None = None,
) -> UsageEvent:
    """A line of an OpenAI Batch API output (or error) file: ``{"id", "custom_id",
    "response": {"status_code", "request_id", "body"}, "error"}``. The body is the chat
    completion, response or embedding list the endpoint returned; a request that failed
    (``error``, or a status other than 2xx) was not billed: NotBilled."""
    what = "openai batch output line"
    data = as_dict(line)
    custom_id = data.get("custom_id")
    response = data.get("response")
    status = _get(response, "status_code") if isinstance(response, Mapping) else None
    if (
        data.get("error")
        or not isinstance(response, Mapping)
        or (isinstance(status, int) and not 200 <= status < 300)
    ):
        reason = _get(data, "error.message") or _get(response, "body.error.message") or status
        raise NotBilled(f"{what} '{custom_id}': request failed ({reason}), not billed")
    body = _require(response, "body", what)
    if not isinstance(body, Mapping):
        raise BuilderError(f"{what}: 'response.body' must be an object")
    kind = detect(body)
    builders = {"openai-chat": from_openai_chat, "openai-responses": from_openai_responses,
                "openai-embedding": from_openai_embedding}  # fmt: skip
    if kind not in builders:
        raise BuilderError(f"{what} '{custom_id}': body is a {kind} payload, not an OpenAI one")
    extra: dict[str, Any] = {} if kind == "openai-responses" else {"provider": provider}
    # the batch request's id names the event: the body's own id could also be billed
    # interactively under the same name
    default_id = f"{provider}:{data['id']}" if data.get("id") else None
    build_one: Any = builders[kind]
    return build_one(body, batch=True, attributes=attributes, occurred_at=occurred_at,
                     event_id=event_id or default_id, **extra)  # fmt: skip


def from_anthropic_batch_result(
    line: Any,
    *,
    provider: str = "anthropic",
    event_id: str | None = None,
    occurred_at: datetime | None = None,
    attributes: Attributes | Mapping[str, Any] | None = None,
) -> UsageEvent:
    """A line of Anthropic Message Batches results: ``{"custom_id", "result": {"type",
    "message"}}``. Only ``succeeded`` results are billed; ``errored``, ``canceled`` and
    ``expired`` ones raise NotBilled."""
    what = "anthropic batch result"
    data = as_dict(line)
    result = _require(data, "result", what)
    kind = _get(result, "type")
    if kind != "succeeded":
        if kind in ("errored", "canceled", "expired"):
            raise NotBilled(f"{what} '{data.get('custom_id')}': {kind}, not billed")
        raise BuilderError(f"{what}: unknown result type {kind!r}")
    message = _require(result, "message", what)
    return from_anthropic_message(message, provider=provider, batch=True, event_id=event_id,
                                  occurred_at=occurred_at, attributes=attributes)  # fmt: skip


def from_gemini_batch_line(
    line: Any,
    *,
    provider: str = "google",
    event_id: str | None = None,
    occurred_at: datetime | None = None,
    attributes: Attributes | Mapping[str, Any] | None = None,
) -> UsageEvent:
    """A line of a Gemini batch output: the Gemini API's ``{"key", "response"}`` (or
    ``{"key", "error"}``), or Vertex AI batch prediction's ``{"request", "response",
    "status"}`` (``status`` empty on success). A failed request raises NotBilled."""
    what = "gemini batch output line"
    data = as_dict(line)
    name = data.get("key") or _get(data, "response.responseId")
    status = data.get("status")
    if data.get("error") or (status not in (None, "") and not isinstance(status, Mapping)):
        reason = _get(data, "error.message") or data.get("error") or status
        raise NotBilled(f"{what} '{name}': request failed ({reason}), not billed")
    if isinstance(status, Mapping) and status.get("code"):  # a google.rpc.Status
        raise NotBilled(f"{what} '{name}': request failed ({status.get('message')}), not billed")
    response = _require(data, "response", what)
    if not isinstance(response, Mapping):
        raise BuilderError(f"{what}: 'response' must be an object")
    key = data.get("key")
    default = f"{provider}:batch:{key}" if key and not response.get("responseId") else None
    return from_gemini(response, provider=provider, batch=True, attributes=attributes,
                       occurred_at=occurred_at, event_id=event_id or default)  # fmt: skip


# --- Apify -----------------------------------------------------------------------------------
def from_apify_run(
    run: Any,
    *,
    plan: str | None = None,
    event_id: str | None = None,
    occurred_at: datetime | None = None,
    attributes: Attributes | Mapping[str, Any] | None = None,
) -> UsageEvent:
    """An Apify run object (``GET /v2/actor-runs/{id}``, bare or wrapped in ``data``)."""
    what = "apify run"
    data = as_dict(run)
    if "data" in data and isinstance(data["data"], Mapping):
        data = dict(data["data"])
    run_id = _require(data, "id", what)
    total = data.get("usageTotalUsd")
    try:
        payload = ApifyRun(
            actor_id=_require(data, "actId", what),
            run_id=run_id,
            status=data.get("status") or "UNKNOWN",
            compute_units=_decimal(_get(data, "stats.computeUnits", 0), "stats.computeUnits", what),
            usage_total_usd=None if total is None else _decimal(total, "usageTotalUsd", what),
            usage_usd={
                k: _decimal(v, f"usageUsd.{k}", what)
                for k, v in (data.get("usageUsd") or {}).items()
            },  # fmt: skip
            results=_int(data, "stats.resultCount", what) or _int(data, "itemCount", what),
            charged_event_counts=dict(data.get("chargedEventCounts") or {}),
            plan=plan,
        )
    except ValidationError as exc:
        raise BuilderError(f"{what}: {explain(exc)}") from None
    when = _when(data.get("finishedAt")) or _when(data.get("startedAt"))
    return _event("apify", payload, event_id=event_id, default_id=f"apify:{run_id}",
                  occurred_at=occurred_at, default_time=when, attributes=attributes)  # fmt: skip


# --- workflow engines ------------------------------------------------------------------------
def workflow_event(
    platform: str, what: str, fields: dict[str, Any], when: datetime | None, **kwargs: Any
) -> UsageEvent:
    """A ``workflow`` event of engine ``platform`` from its ``WorkflowRun`` fields; each
    engine's builder (a new engine's too: docs/extending.md) ends here. ``what`` names
    the payload in errors; ``kwargs``: event_id, occurred_at, attributes."""
    try:
        payload = WorkflowRun(platform=platform, **fields)
    except ValidationError as exc:
        raise BuilderError(f"{what}: {explain(exc)}") from None
    return _event("workflow", payload, event_id=kwargs.get("event_id"),
                  default_id=f"{platform}:{fields['execution_id']}",
                  occurred_at=kwargs.get("occurred_at"), default_time=when,
                  attributes=kwargs.get("attributes"))  # fmt: skip


def _duration_ms(start: datetime | None, end: datetime | None) -> int:
    if start is None or end is None or end < start:
        return 0
    return int((end - start).total_seconds() * 1000)


def from_n8n_execution(execution: Any, *, plan: str | None = None, **kwargs: Any) -> UsageEvent:
    """n8n ``GET /executions/{id}``: billed per workflow execution."""
    what = "n8n execution"
    data = as_dict(execution)
    start, stop = _when(data.get("startedAt")), _when(data.get("stoppedAt"))
    status = data.get("status") or ("success" if data.get("finished") else "error")
    fields = {"workflow_id": str(_require(data, "workflowId", what)),
              "execution_id": str(_require(data, "id", what)), "status": status,
              "duration_ms": _duration_ms(start, stop), "plan": plan}  # fmt: skip
    return workflow_event("n8n", what, fields, stop or start, **kwargs)


def from_zapier_task_usage(record: Any, *, plan: str | None = None, **kwargs: Any) -> UsageEvent:
    """A Zapier task-history record: billed per task a Zap run used."""
    what = "zapier zap run"
    data = as_dict(record)
    zap = data.get("zap_id") or _get(data, "zap.id")
    run = data.get("id") or data.get("run_id")
    if zap is None or run is None:
        raise BuilderError(f"{what}: missing 'zap_id' or 'id'")
    tasks = data.get("tasks_used", data.get("task_count", data.get("tasks", 0)))
    fields = {"workflow_id": str(zap), "execution_id": str(run),
              "status": str(data.get("status") or "success").lower(),
              "tasks": _int({"t": tasks}, "t", what), "plan": plan}  # fmt: skip
    when = _when(data.get("date") or data.get("created_at") or data.get("start_time"))
    return workflow_event("zapier", what, fields, when, **kwargs)


def from_make_execution(execution: Any, *, plan: str | None = None, **kwargs: Any) -> UsageEvent:
    """A Make scenario execution log entry: billed per operation."""
    what = "make execution"
    data = as_dict(execution)
    scenario = data.get("scenarioId") or data.get("scenario_id")
    run = data.get("executionId") or data.get("id")
    if scenario is None or run is None:
        raise BuilderError(f"{what}: missing 'scenarioId' or 'id'")
    status = data.get("status")
    codes = {1: "success", 2: "warning", 3: "error"}
    status_text = codes[status] if status in codes else str(status or "success")
    fields = {"workflow_id": str(scenario), "execution_id": str(run), "status": status_text,
              "operations": _int(data, "operations", what),
              "duration_ms": _int(data, "duration", what), "plan": plan}  # fmt: skip
    return workflow_event("make", what, fields, _when(data.get("timestamp")), **kwargs)


def from_power_automate_run(
    run: Any, *, flow_id: str | None = None, plan: str | None = None, **kwargs: Any
) -> UsageEvent:
    """A Power Automate flow run (management API ``.../runs/{name}``)."""
    what = "power automate run"
    data = as_dict(run)
    props = _require(data, "properties", what)
    start, end = _when(props.get("startTime")), _when(props.get("endTime"))
    flow = flow_id or _get(props, "workflow.name")
    if flow is None:
        raise BuilderError(f"{what}: missing 'properties.workflow.name' (or pass flow_id)")
    actions = props.get("actions")
    fields = {"workflow_id": str(flow), "execution_id": str(_require(data, "name", what)),
              "status": str(props.get("status") or "Succeeded").lower(),
              "operations": len(actions) if isinstance(actions, (list, dict)) else 0,
              "duration_ms": _duration_ms(start, end), "plan": plan}  # fmt: skip
    return workflow_event("power_automate", what, fields, end or start, **kwargs)


# --- relative event times ---------------------------------------------------------------------
_RELATIVE = re.compile(r"now(?:\s*-\s*(\d{1,6})\s*([smhd]))?")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def resolve_relative_time(data: dict[str, Any], now: datetime | None = None) -> dict[str, Any]:
    """The event dict with ``occurred_at: "now"`` / ``"now-45m"`` made absolute (from
    ``now``, default the wall clock); any other value is left to validation."""
    value = data.get("occurred_at")
    match = _RELATIVE.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None:
        return data
    when = now or datetime.now(UTC)
    amount, unit = match.groups()
    if amount:
        try:
            when -= timedelta(**{_UNITS[unit]: int(amount)})
        except OverflowError:
            raise BuilderError(f"occurred_at '{value}' lies before the year 1") from None
    return {**data, "occurred_at": when}


# --- auto-detection ---------------------------------------------------------------------------
def build(
    payload: Any, source: str | None = None, *, now: datetime | None = None, **kwargs: Any
) -> UsageEvent:
    """Build from any supported payload; ``source`` forces a payload format by its
    ``--source`` name (the registry of source kinds, spendstream/sources/). ``now``
    resolves a usage event's relative ``occurred_at`` (default: the wall clock)."""
    from spendstream.sources import SourceError, sources

    data = as_dict(payload)
    kind = source or detect(data)
    if kind == "event":
        return UsageEvent.model_validate(resolve_relative_time(data, now))
    try:
        fmt = sources().format(kind)
    except SourceError as exc:
        raise BuilderError(str(exc)) from None
    event: UsageEvent = fmt.build(data, **kwargs)
    return event


def detect(data: Mapping[str, Any]) -> str:
    """``--source`` name of a payload's format, from the fields only that API returns."""
    from spendstream.sources import sources

    if "event_id" in data and "payload" in data:
        return "event"
    found = sources().detect(data)
    if found is None:
        raise BuilderError(
            "could not tell which API this payload comes from; pass --source (one of "
            f"{', '.join(sources().format_names())})"
        )
    return found.name
