"""Pydantic models mirroring the Avro contracts; they validate at the edges.

The ``.avsc`` files are the language-neutral truth. These models add the rules Avro cannot
say (non-negative counts, bounded strings, ISO currency codes, timestamps not from the
future) and convert to and from the plain dicts fastavro reads and writes.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from .avro import NAMESPACE, codec
from .money import float_refusal, money

ShortStr = Annotated[str, Field(min_length=1, max_length=256)]
OptStr = Annotated[str | None, Field(default=None, max_length=256)]
Count = Annotated[int, Field(default=0, ge=0, le=10**15)]


def _refuse_float(value: Any) -> Any:
    """Refuse a float before pydantic turns it into a Decimal (through its repr, so an
    after-validator could no longer tell 10.1 typed as a number from "10.1" quoted).
    Decimal (what fastavro decodes), int and decimal strings pass."""
    if isinstance(value, float):
        raise PydanticCustomError("float_money", float_refusal(value).replace("{", "{{"))
    return value


def _nonneg_money(value: Decimal) -> Decimal:
    value = money(value)
    if value < 0:
        raise ValueError("must not be negative")
    return value


#: An amount from outside (or priced from one): exact, nano-units, not negative, no float.
Money = Annotated[Decimal, BeforeValidator(_refuse_float), AfterValidator(_nonneg_money)]
#: A money figure our own stages computed (costs, spend, projections): no float either.
ExactDecimal = Annotated[Decimal, BeforeValidator(_refuse_float)]


def _currency(value: str) -> str:
    if len(value) != 3 or not value.isalpha():
        raise ValueError(f"'{value}' is not an ISO 4217 currency code (e.g. USD, EUR)")
    return value.upper()


Currency = Annotated[str, AfterValidator(_currency)]


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


_MICROSECOND = timedelta(microseconds=1)


def to_micros(when: datetime) -> int:
    """Exact microseconds since the epoch (no float on the way). The divisor is built
    once: ``timedelta(microseconds=1)`` per call cost two thirds of this function's
    1.8 us, and the price stage calls it a few times per event."""
    return (when - EPOCH) // _MICROSECOND


def from_micros(micros: int) -> datetime:
    return EPOCH + timedelta(0, 0, micros)  # positional: a third cheaper than by keyword


#: ClickHouse DateTime64 holds 1900..2299 and clamps what lies outside, so anything
#: outside a sane range is refused here instead of being stored at the wrong time.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("timestamp needs a time zone (e.g. 2026-01-31T12:00:00Z)")
    value = value.astimezone(UTC)
    if not EARLIEST <= value < LATEST:
        raise ValueError(f"timestamp {value.isoformat()} is outside 1970..2200")
    return value


AwareDatetime = Annotated[datetime, AfterValidator(_aware)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class Attributes(Strict):
    org: OptStr = None
    team: OptStr = None
    project: OptStr = None
    user: OptStr = None
    department: OptStr = None
    session: OptStr = None
    feature: OptStr = None
    tags: dict[str, str] = Field(default_factory=dict)

    @field_validator("tags")
    @classmethod
    def _bounded_tags(cls, tags: dict[str, str]) -> dict[str, str]:
        if len(tags) > 64:
            raise ValueError(f"at most 64 tags, got {len(tags)}")
        for key, val in tags.items():
            if not key or len(key) > 128 or len(val) > 256:
                raise ValueError(f"tag '{key[:40]}': key 1-128 chars, value up to 256 chars")
        return tags

    def get(self, field: str) -> str | None:
        """Attribute or tag value by name (budgets match on either)."""
        if field in Attributes.model_fields and field != "tags":
            return getattr(self, field)
        return self.tags.get(field)


class LlmUsage(Strict):
    kind: Literal["llm"] = "llm"
    provider: ShortStr
    model: ShortStr
    operation: Literal["chat", "responses", "embedding", "image", "audio"] = "chat"
    input_tokens: Count = 0
    output_tokens: Count = 0
    cache_read_tokens: Count = 0
    #: every cache write, whatever its lifetime (so older producers keep their meaning)
    cache_write_tokens: Count = 0
    #: the part of cache_write_tokens written with a 1-hour lifetime (its own, higher rate)
    cache_write_1h_tokens: Count = 0
    reasoning_tokens: Count = 0
    input_audio_tokens: Count = 0
    output_audio_tokens: Count = 0
    images: Count = 0
    image_size: OptStr = None
    request_id: OptStr = None
    #: the tier the provider says served the call (None: standard); priced at its rates
    service_tier: Annotated[str | None, Field(default=None, min_length=1, max_length=64)] = None
    #: made through a provider's batch API: priced at batch rates
    batch: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> LlmUsage:
        if self.cache_read_tokens + self.cache_write_tokens > self.input_tokens:
            raise ValueError(
                "cache_read_tokens + cache_write_tokens exceed input_tokens; input_tokens is "
                "the total prompt size including cached tokens"
            )
        if self.cache_write_1h_tokens > self.cache_write_tokens:
            raise ValueError(
                "cache_write_1h_tokens exceed cache_write_tokens; cache_write_tokens is the "
                "total of all cache writes, the 1-hour ones included"
            )
        if self.reasoning_tokens > self.output_tokens:
            raise ValueError("reasoning_tokens exceed output_tokens (they are part of output)")
        return self


class ApifyRun(Strict):
    kind: Literal["apify"] = "apify"
    actor_id: ShortStr
    run_id: ShortStr
    status: ShortStr = "SUCCEEDED"
    compute_units: Money = Decimal(0)
    usage_total_usd: Money | None = None
    usage_usd: dict[str, Money] = Field(default_factory=dict)
    results: Count = 0
    charged_event_counts: dict[str, Annotated[int, Field(ge=0)]] = Field(default_factory=dict)
    plan: OptStr = None


def _engine(value: str) -> str:
    """A registered workflow engine's canonical name (an alias such as ``power-automate``
    is read as ``power_automate``): the registry of source kinds says which exist."""
    from spendstream.sources import sources

    kind = sources().find(value)
    if kind is None or kind.wire != "workflow":
        engines = ", ".join(k.name for k in sources().sub_kinds("workflow"))
        raise ValueError(f"unknown workflow engine '{value}'; use one of {engines}")
    return kind.name


class WorkflowRun(Strict):
    kind: Literal["workflow"] = "workflow"
    #: the engine: a string on the wire, checked against the registered engines
    platform: Annotated[str, Field(min_length=1, max_length=256), AfterValidator(_engine)]
    workflow_id: ShortStr
    execution_id: ShortStr
    status: ShortStr = "success"
    tasks: Count = 0
    operations: Count = 0
    duration_ms: Count = 0
    plan: OptStr = None


class CustomCost(Strict):
    kind: Literal["custom"] = "custom"
    amount: Money
    currency: Currency
    category: ShortStr = "other"
    description: Annotated[str | None, Field(default=None, max_length=1024)] = None


Payload = Annotated[LlmUsage | ApifyRun | WorkflowRun | CustomCost, Field(discriminator="kind")]
_PAYLOAD_NAMES = {
    "llm": f"{NAMESPACE}.LlmUsage",
    "apify": f"{NAMESPACE}.ApifyRun",
    "workflow": f"{NAMESPACE}.WorkflowRun",
    "custom": f"{NAMESPACE}.CustomCost",
}
#: A field only that payload record has: tells the union branch apart without asking
#: fastavro for record names (which costs ~15% of decode time).
_PAYLOAD_MARKERS = (("model", "llm"), ("actor_id", "apify"), ("platform", "workflow"),
                    ("amount", "custom"))  # fmt: skip


def payload_kind(payload: dict[str, Any]) -> str:
    for marker, kind in _PAYLOAD_MARKERS:
        if marker in payload:
            return kind
    raise ValueError("payload matches no known usage record")


Source = Literal["llm", "apify", "workflow", "custom"]

#: How far in the future an event's time may lie; set from configuration by workers.
MAX_FUTURE_SKEW = timedelta(minutes=5)


class UsageEvent(Strict):
    event_id: Annotated[str, Field(min_length=1, max_length=128)]
    occurred_at: AwareDatetime
    source: Source
    attributes: Attributes = Field(default_factory=Attributes)
    payload: Payload
    producer: OptStr = None

    @model_validator(mode="after")
    def _source_matches_payload(self) -> UsageEvent:
        if self.payload.kind != self.source:
            raise ValueError(f"source '{self.source}' but payload is a {self.payload.kind} payload")
        return self

    def check_clock(self, now: datetime | None = None, skew: timedelta = MAX_FUTURE_SKEW) -> None:
        """Reject events from the future (beyond the allowed clock skew)."""
        now = now or datetime.now(UTC)
        if self.occurred_at > now + skew:
            raise ValueError(
                f"occurred_at {self.occurred_at.isoformat()} is more than "
                f"{int(skew.total_seconds())} s in the future; check the producer's clock"
            )

    # --- Avro conversion ------------------------------------------------------------------
    def to_avro(self) -> dict[str, Any]:
        payload = self.payload.model_dump(exclude={"kind"})
        return {
            "event_id": self.event_id,
            "occurred_at": self.occurred_at,
            "source": self.source,
            "attributes": self.attributes.model_dump(),
            "payload": (_PAYLOAD_NAMES[self.payload.kind], payload),
            "producer": self.producer,
        }

    @classmethod
    def from_avro(cls, record: dict[str, Any]) -> UsageEvent:
        payload = record["payload"]
        data = dict(record)
        data["payload"] = {**payload, "kind": payload_kind(payload)}
        return cls.model_validate(data)

    def encode(self) -> bytes:
        return codec("UsageEvent").encode(self.to_avro())

    @classmethod
    def decode(cls, data: bytes) -> UsageEvent:
        return cls.from_avro(codec("UsageEvent").decode(data))

    @property
    def provider(self) -> str | None:
        return self.payload.provider if isinstance(self.payload, LlmUsage) else None

    @property
    def model(self) -> str | None:
        return self.payload.model if isinstance(self.payload, LlmUsage) else None

    def field(self, name: str) -> str | None:
        """Value of a matchable field: source fields first, then attributes and tags."""
        if name == "source":
            return self.source
        if name in ("provider", "model", "platform", "actor_id", "category", "operation"):
            value = getattr(self.payload, name, None)
            return value if isinstance(value, str) else None
        return self.attributes.get(name)


class SourcePosition(Strict):
    topic: str
    partition: int
    offset: int


class CostComponent(Strict):
    name: str
    quantity: ExactDecimal
    unit: str
    amount: ExactDecimal


class PricedUsage(Strict):
    event: UsageEvent
    cost: ExactDecimal
    currency: Currency
    priced: bool = True
    components: list[CostComponent] = Field(default_factory=list)
    price_source: str
    price_version: str
    origin: SourcePosition
    priced_at: AwareDatetime

    def to_avro(self) -> dict[str, Any]:
        data = self.model_dump(exclude={"event"})
        data["event"] = self.event.to_avro()
        return data

    @classmethod
    def from_avro(cls, record: dict[str, Any]) -> PricedUsage:
        data = dict(record)
        data["event"] = UsageEvent.from_avro(record["event"])
        return cls.model_validate(data)


class CostAllocation(Strict):
    allocation_id: str
    event_id: str
    budget_id: str
    matched_via: str
    period_key: str
    period_start: AwareDatetime
    period_end: AwareDatetime
    occurred_at: AwareDatetime
    amount: ExactDecimal
    currency: Currency
    source: Source
    provider: str | None = None
    model: str | None = None
    attributes: Attributes
    origin: SourcePosition

    def to_avro(self) -> dict[str, Any]:
        return self.model_dump()

    @classmethod
    def from_avro(cls, record: dict[str, Any]) -> CostAllocation:
        return cls.model_validate(record)


ThresholdAction = Literal["notify", "throttle", "require-approval", "downgrade", "block"]


class Threshold(Strict):
    #: A share, not money: a float is accepted (pydantic reads it through its shortest repr,
    #: so ``percent: 80.5`` is exactly 80.5), as people write tiers unquoted.
    percent: Annotated[Decimal, Field(gt=0, le=1000)]
    action: ThresholdAction = "notify"
    downgrade_to: OptStr = None

    @model_validator(mode="after")
    def _downgrade_needs_model(self) -> Threshold:
        if self.action == "downgrade" and not self.downgrade_to:
            raise ValueError("action 'downgrade' needs downgrade_to (the cheaper model)")
        return self


class BudgetAlert(Strict):
    alert_id: str
    budget_id: str
    budget_name: str
    period_key: str
    kind: Literal["threshold", "exceeded", "forecast", "anomaly"]
    threshold_percent: Decimal | None = None
    action: ThresholdAction = "notify"
    downgrade_to: str | None = None
    severity: Literal["info", "warning", "critical"] = "warning"
    spent: ExactDecimal
    limit: ExactDecimal
    currency: Currency
    message: str
    triggered_by: str | None = None
    triggered_at: AwareDatetime
    #: the period's projected total when the alert fired (alerts written before v2: None)
    projected_total: ExactDecimal | None = None

    def to_avro(self) -> dict[str, Any]:
        return self.model_dump()

    @classmethod
    def from_avro(cls, record: dict[str, Any]) -> BudgetAlert:
        return cls.model_validate(record)


class BudgetStatus(Strict):
    budget_id: str
    budget_name: str
    period_key: str
    period_start: AwareDatetime
    period_end: AwareDatetime
    spent: ExactDecimal
    limit: ExactDecimal
    currency: Currency
    event_count: int
    state: Literal["normal", "warning", "critical", "exceeded"]
    alerted_tiers: list[str] = Field(default_factory=list)
    updated_at: AwareDatetime
    burn_rate_per_day: ExactDecimal | None = None
    projected_total: ExactDecimal | None = None
    projected_low: ExactDecimal | None = None
    projected_high: ExactDecimal | None = None
    days_left: Decimal | None = None
    days_to_limit: Decimal | None = None
    active_alerts: list[str] = Field(default_factory=list)
    #: allocations in another currency waiting for their day's exchange rate, and what
    #: they amount to per billed currency (not in ``spent`` until converted)
    held_allocations: int = 0
    held_amounts: dict[str, ExactDecimal] = Field(default_factory=dict)

    @property
    def remaining(self) -> Decimal:
        return self.limit - self.spent

    @property
    def percent(self) -> Decimal:
        return (
            (self.spent * 100 / self.limit).quantize(Decimal("0.01")) if self.limit else Decimal(0)
        )

    def to_avro(self) -> dict[str, Any]:
        return self.model_dump()

    @classmethod
    def from_avro(cls, record: dict[str, Any]) -> BudgetStatus:
        return cls.model_validate(record)

    @classmethod
    def from_trusted_avro(cls, record: dict[str, Any]) -> BudgetStatus:
        """A status our own workers wrote, already typed by Avro decoding: no second
        validation (every worker reads every status, one per budget period and second)."""
        return cls.model_construct(**record)


class AlertAction(Strict):
    """An acknowledgement (someone is on it) or resolution (it is dealt with) of an alert."""

    alert_id: Annotated[str, Field(min_length=1, max_length=512)]
    budget_id: Annotated[str, Field(min_length=1, max_length=128)]
    action: Literal["acknowledge", "resolve"]
    actor: Annotated[str, Field(min_length=1, max_length=256)]
    note: Annotated[str | None, Field(default=None, max_length=2000)] = None
    at: AwareDatetime

    def to_avro(self) -> dict[str, Any]:
        return self.model_dump()

    @classmethod
    def from_avro(cls, record: dict[str, Any]) -> AlertAction:
        return cls.model_validate(record)


class DeadLetter(Strict):
    reason: str
    error_code: str
    origin: SourcePosition
    event_id: str | None = None
    key: bytes | None = None
    value: bytes | None = None
    rejected_at: AwareDatetime

    def to_avro(self) -> dict[str, Any]:
        return self.model_dump()

    @classmethod
    def from_avro(cls, record: dict[str, Any]) -> DeadLetter:
        return cls.model_validate(record)


def explain(exc: ValidationError, label: str = "event") -> str:
    """One line per problem, with the field path: what a producer needs to fix its input.

    A problem with the whole object (no field path) is labelled ``label``: a budget's
    rule broken must not read as an event's. An empty label leaves it unlabelled (when
    the caller already said which object it is)."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
        where = loc or label
        msg = str(err["msg"]).removeprefix("Value error, ")  # pydantic's wrapper, not news
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts)
