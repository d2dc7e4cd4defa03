"""The price stage as plain Python: raw input records in, output records out.

Decode, validate, dedupe, price and allocate a batch of raw usage records, and build what
the batch produces: one ``priced/3`` batch record per input partition (usage.priced), one
``allocations/2`` batch record per partition of cost-allocations (schemas/batches.py), a
dead letter per rejected record, and one ``SeenEvents`` changelog record per input
partition. No Kafka here (price_loop.py delivers and commits); a test drives it with a
list of records. Money is integer nano-units and times integer microseconds throughout.

The rules are those of ``UsageProcessor`` (processor.py), which stays the readable
reference and the fault suite's oracle; this is the same decision on fastavro dicts
instead of pydantic models, because per-event work must cost microseconds. A property
test holds the two to the same outcome. What the fast path cannot decide alone goes
through the reference: a payload other than an LLM call, anything pydantic would
normalise or refuse, a model the compiled prices do not cover.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from pydantic import ValidationError

from spendstream.schemas import batches
from spendstream.schemas.avro import AvroDecodeError, codec, framed_codec
from spendstream.schemas.models import (
    EARLIEST,
    LATEST,
    UsageEvent,
    explain,
    from_micros,
    payload_kind,
    to_micros,
)
from spendstream.schemas.money import SCALE, to_nanos
from spendstream.sources.columns import payload_columns
from spendstream.sources.registry import WIRE_KINDS

from .compiled_pricing import CompiledPricer
from .dedupe import DedupeState
from .matching import BudgetRegistry
from .partitioner import KeyPartitioner
from .periods import LateWindow, Period, budget_period
from .price_loop import InputRecord, OutputRecord, PricedBatch
from .pricing import Pricer, PricingError

log = logging.getLogger("spendstream.price")

SOURCES = WIRE_KINDS  # the usage.<wire> topics
OPERATIONS = ("chat", "responses", "embedding", "image", "audio")
ATTRIBUTE_NAMES = ("org", "team", "project", "user", "department", "session", "feature")
COUNT_FIELDS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
                "reasoning_tokens", "input_audio_tokens", "output_audio_tokens", "images",
                "cache_write_1h_tokens")  # fmt: skip
MAX_TIER = 64  # LlmUsage.service_tier's length bound
MAX_COUNT = 10**15
NANOS = 10**SCALE


def fast_valid_llm(event: dict[str, Any]) -> bool:
    """True when pydantic would accept this decoded LLM event unchanged. False means
    "ask pydantic" (it may still accept it, normalised, or refuse it with the reason).

    Avro decoding already gave every field its type (str, None, int, an aware datetime),
    so only pydantic's other rules are checked: lengths, nothing to strip (``str.strip``
    returns the string itself when there is nothing to strip), ranges, literals."""
    payload = event["payload"]
    if event["source"] != "llm" or "model" not in payload:
        return False
    text = event["event_id"]
    if not 0 < len(text) <= 128 or text.strip() is not text:
        return False
    text = event["producer"]
    if text is not None and (len(text) > 256 or text.strip() is not text):
        return False
    when = event["occurred_at"]
    if not EARLIEST <= when < LATEST:
        return False
    attrs = event["attributes"]
    for name in ATTRIBUTE_NAMES:
        text = attrs[name]
        if text is not None and (len(text) > 256 or text.strip() is not text):
            return False
    tags = attrs["tags"]
    if tags:
        if len(tags) > 64:
            return False
        for key, text in tags.items():
            if not 0 < len(key) <= 128 or key.strip() is not key:
                return False
            if len(text) > 256 or text.strip() is not text:
                return False
    for text in (payload["provider"], payload["model"]):
        if not 0 < len(text) <= 256 or text.strip() is not text:
            return False
    if payload["operation"] not in OPERATIONS:
        return False
    for text in (payload["image_size"], payload["request_id"]):
        if text is not None and (len(text) > 256 or text.strip() is not text):
            return False
    text = payload["service_tier"]
    if text is not None and (not 0 < len(text) <= MAX_TIER or text.strip() is not text):
        return False
    for name in COUNT_FIELDS:
        if not 0 <= payload[name] <= MAX_COUNT:
            return False
    return (
        payload["cache_read_tokens"] + payload["cache_write_tokens"] <= payload["input_tokens"]
        and payload["reasoning_tokens"] <= payload["output_tokens"]
        and payload["cache_write_1h_tokens"] <= payload["cache_write_tokens"]
    )


class EventView:
    """A decoded event as budget matching sees it (``Matchable``)."""

    __slots__ = ("event", "payload")

    def __init__(self, event: dict[str, Any]) -> None:
        self.event = event
        self.payload = event["payload"]

    def field(self, name: str) -> str | None:
        if name == "source":
            return str(self.event["source"])
        if name in ("provider", "model", "platform", "actor_id", "category", "operation"):
            value = self.payload.get(name)
            return value if isinstance(value, str) else None
        attrs = self.event["attributes"]
        if name in ATTRIBUTE_NAMES:
            found: str | None = attrs[name]
            return found
        tag: str | None = attrs["tags"].get(name)
        return tag


@dataclass
class Priced:
    """One priced event: what goes into its priced row and its allocation rows."""

    event: dict[str, Any]
    raw: bytes  # the event as stored: the input bytes when pydantic changed nothing
    total_nanos: int
    currency: str
    priced: bool
    #: (name, quantity in nano-units, unit, amount in nano-units)
    lines: list[tuple[str, int, str, int]]
    source: str
    version: str
    fallback: str | None = None
    #: standard rates for a batch or tiered call nobody has rates for (Billing.flag)
    flag: str | None = None


@dataclass
class Rejected:
    code: str
    reason: str
    event_id: str | None = None


class PriceRules:
    """The decisions of ``UsageProcessor`` on dicts. Every method is pure but for caches."""

    def __init__(
        self,
        budgets: BudgetRegistry,
        pricer: CompiledPricer,
        *,
        max_skew: timedelta = timedelta(minutes=5),
        unknown_price: str = "dlq",
        late_periods: int | None = None,
    ) -> None:
        self.budgets = budgets
        self.compiled = pricer
        self.reference: Pricer = pricer.pricer
        self.max_skew = max_skew
        self.unknown_price = unknown_price
        self.late_periods = late_periods
        self._codec = codec("UsageEvent")
        self.late = LateWindow(late_periods)
        self._periods: dict[str, tuple[Period, int, int, Any]] = {}

    # --- decode and validate -----------------------------------------------------------
    def decode(
        self, record: InputRecord, now: datetime
    ) -> tuple[dict[str, Any], bytes, UsageEvent | None] | Rejected:
        """(event dict, bytes to store, model when pydantic was asked) or the rejection."""
        value = record.value
        if value is None:
            return Rejected("empty", "message has no value")
        try:
            event = self._codec.decode(value)
        except AvroDecodeError as exc:
            return Rejected("decode", str(exc))
        model: UsageEvent | None = None
        raw = value
        if not fast_valid_llm(event):
            try:
                payload = event["payload"]
                model = UsageEvent.model_validate(
                    {**event, "payload": {**payload, "kind": payload_kind(payload)}}
                )
            except ValidationError as exc:
                return Rejected("invalid", explain(exc))
            except ValueError as exc:  # payload_kind: no known payload record
                return Rejected("invalid", f"payload: {exc}")
            normal = model.to_avro()
            normal["payload"] = normal["payload"][1]
            if normal != event:
                raw = self._codec.encode(model.to_avro())
            event = normal
        if event["occurred_at"] > now + self.max_skew:
            return Rejected(
                "future",
                f"occurred_at {event['occurred_at'].isoformat()} is more than "
                f"{int(self.max_skew.total_seconds())} s in the future; check the producer's "
                "clock",
                event["event_id"],
            )
        expected = record.topic.rsplit("usage.", 1)[-1]
        if expected in SOURCES and expected != event["source"]:
            return Rejected(
                "wrong_topic",
                f"a '{event['source']}' event on topic {record.topic}; publish it to usage."
                f"{event['source']}",
                event["event_id"],
            )
        return event, raw, model

    # --- price -------------------------------------------------------------------------
    def price(
        self, event: dict[str, Any], raw: bytes, model: UsageEvent | None
    ) -> Priced | Rejected:
        payload = event["payload"]
        try:
            if event["source"] == "llm":
                llm = self.compiled.price_payload(payload, event["occurred_at"])
                lines = [(name, q * NANOS, unit, a) for name, q, unit, a in llm.lines]
                return Priced(event, raw, llm.total_nanos, llm.currency, True, lines,
                              llm.source, llm.version, llm.fallback, llm.flag)  # fmt: skip
            assert model is not None  # every non-LLM event went through pydantic
            cost = self.reference.price(model)
        except PricingError as exc:
            if self.unknown_price == "flag" and exc.code in ("unknown_model", "unknown_price"):
                return Priced(event, raw, 0, "USD", False, [], "unpriced", "-")
            return Rejected(exc.code, str(exc), event["event_id"])
        lines = [(c.name, to_nanos(c.quantity), c.unit, to_nanos(c.amount))
                 for c in cost.components]  # fmt: skip
        return Priced(event, raw, to_nanos(cost.total), cost.currency, True, lines, cost.source,
                      cost.version)  # fmt: skip

    # --- allocate ----------------------------------------------------------------------
    def allocate(
        self, priced: Priced, origin: tuple[str, int, int], arrived_us: int
    ) -> tuple[list[list[Any]], Rejected | None]:
        """(allocation rows in the ``allocations/1`` column order, the too_late rejection
        if any). A budget in another currency gets the amount as billed: the aggregator
        converts it at the rate of the event's day (fx.py). ``arrived_us``: the record's
        arrival, microseconds since the epoch (times compare as integers here: this runs
        for every event and budget)."""
        event = priced.event
        when = event["occurred_at"]
        when_us = to_micros(when)
        rows: list[list[Any]] = []
        late: Rejected | None = None
        tail: list[Any] | None = None
        for match in self.budgets.match(EventView(event)):
            budget = match.budget
            found = self._period(budget, when, when_us)
            if found is None:
                continue
            period, start_us, end_us, _ = found
            oldest_us = self.late.oldest_open_us(budget, arrived_us)
            if late is None and oldest_us is not None and start_us < oldest_us:
                rows.clear()
                late = Rejected(
                    "too_late",
                    f"event of {when:%Y-%m-%d %H:%M} UTC falls in period {period.key} of "
                    f"budget '{budget.budget_id}', which closed to late events "
                    f"(SPENDSTREAM_LATE_PERIODS={self.late_periods} past periods count); it "
                    "is priced but counts toward none of its budgets",
                    event["event_id"],
                )
            if late is not None:
                continue
            if tail is None:
                tail = self._event_columns(priced, origin, when_us)
            rows.append([event["event_id"], budget.budget_id, match.via, period.key, start_us,
                         end_us, *tail])  # fmt: skip
        return rows, late

    @staticmethod
    def _event_columns(priced: Priced, origin: tuple[str, int, int], when_us: int) -> list[Any]:
        """The columns an event's allocation rows share, from occurred_at_us on."""
        event = priced.event
        payload = event["payload"]
        attrs = event["attributes"]
        llm = event["source"] == "llm"
        return [
            when_us, priced.total_nanos, priced.currency,
            event["source"], payload["provider"] if llm else "", payload["model"] if llm else "",
            attrs["org"] or "", attrs["team"] or "", attrs["project"] or "", attrs["user"] or "",
            attrs["department"] or "", attrs["feature"] or "", attrs["tags"], *origin,
        ]  # fmt: skip

    def _period(
        self, budget: Any, when: datetime, when_us: int
    ) -> tuple[Period, int, int, Any] | None:
        """The budget's period holding ``when``, with its bounds in microseconds and the
        definition it was computed for (cached per budget: consecutive events of a budget
        nearly always fall in one period; a changed budget is a new definition object)."""
        found = self._periods.get(budget.budget_id)
        if found is not None and found[3] is budget and found[1] <= when_us < found[2]:
            return found
        period = budget_period(budget, when)
        if period is None:
            return None
        if len(self._periods) > 100_000:
            self._periods.clear()
        found = self._periods[budget.budget_id] = (
            period,
            to_micros(period.start),
            to_micros(period.end),
            budget,
        )
        return found

    def oldest_open(self, budget: Any, now: datetime) -> datetime | None:
        """As ``UsageProcessor.oldest_open``: the oldest period start open to late events."""
        return self.late.oldest_open(budget, now)


# --- the batch ------------------------------------------------------------------------
@dataclass
class _Partition:
    """Per input partition of a batch."""

    rows: list[list[Any]] = field(default_factory=list)
    seen_ids: list[str] = field(default_factory=list)
    seen_offsets: list[int] = field(default_factory=list)
    first: int = -1
    last: int = -1
    newest_ms: int = 0


class PriceStage:
    def __init__(
        self,
        rules: PriceRules,
        dedupe: DedupeState,
        *,
        priced_topic: str,
        allocations_topic: str,
        dlq_topic: str,
        changelog_topic: str,
        partitions: Callable[[str], int],
    ) -> None:
        self.rules = rules
        self.dedupe = dedupe
        self.topics = (priced_topic, allocations_topic, dlq_topic, changelog_topic)
        self.partitions = partitions
        self.allocation_partition = KeyPartitioner(partitions(allocations_topic))
        self._seen = framed_codec("SeenEvents", changelog_topic)
        self._dead = framed_codec("DeadLetter", dlq_topic)

    def process(self, records: list[InputRecord], now: datetime | None = None) -> PricedBatch:
        """Everything ``records`` produce, and the offsets to commit afterwards."""
        now = now or datetime.now(UTC)
        now_us = to_micros(now)
        rules, dedupe = self.rules, self.dedupe
        batch = PricedBatch()
        counters = batch.counters
        parts: dict[tuple[str, int], _Partition] = defaultdict(_Partition)
        by_target: dict[int, list[list[Any]]] = defaultdict(list)
        target_origins: dict[int, dict[tuple[str, int], list[int]]] = defaultdict(dict)
        dead: list[OutputRecord] = []
        budget_column = batches.A["budget_id"]
        for record in records:
            tp = (record.topic, record.partition)
            part = parts[tp]
            if part.first < 0:
                part.first = record.offset
            part.last = record.offset
            part.newest_ms = max(part.newest_ms, record.timestamp_ms)
            decoded = rules.decode(record, now)
            if isinstance(decoded, Rejected):
                dead.append(self._dead_letter(decoded, record, now))
                counters["dlq"] += 1
                counters[f"dlq_{decoded.code}"] += 1
                continue
            event, raw, model = decoded
            event_id = event["event_id"]
            first = dedupe.first_seen(tp, event_id)
            if first is not None and first != record.offset:
                counters["duplicates"] += 1
                continue
            priced = rules.price(event, raw, model)
            if isinstance(priced, Rejected):
                dead.append(self._dead_letter(priced, record, now))
                counters["dlq"] += 1
                counters[f"dlq_{priced.code}"] += 1
                continue
            if priced.fallback:
                counters[f"price_fallback_{priced.fallback}"] += 1
            if priced.flag:  # "unknown_tier:<tier>" counts as unknown_tier
                counters[priced.flag.partition(":")[0]] += 1
            arrived_us = record.timestamp_ms * 1000 if record.timestamp_ms > 0 else now_us
            origin = (record.topic, record.partition, record.offset)
            allocations, late = rules.allocate(priced, origin, arrived_us)
            if late is not None:
                dead.append(self._dead_letter(late, record, now))
                counters["dlq"] += 1
                counters[f"dlq_{late.code}"] += 1
                counters["too_late"] += 1
            part.rows.append(_priced_row(priced, origin, now_us))
            for row in allocations:
                target = self.allocation_partition(row[budget_column])
                by_target[target].append(row)
                offsets = target_origins[target].setdefault(tp, [record.offset, record.offset])
                offsets[1] = record.offset
            counters["priced"] += 1
            counters["allocations"] += len(allocations)
            if first is None:
                dedupe.mark(tp, event_id, record.offset, record.timestamp_ms)
                part.seen_ids.append(event_id)
                part.seen_offsets.append(record.offset)
        batch.outputs = dead
        priced_topic, allocations_topic, _, changelog = self.topics
        n_priced, n_changelog = self.partitions(priced_topic), self.partitions(changelog)
        for tp, part in parts.items():
            header = [("origin", f"{tp[0]}:{tp[1]}:{part.first}-{part.last}".encode()),
                      ("rows", b"%d" % len(part.rows))]  # fmt: skip
            if part.rows:
                batch.outputs.append(OutputRecord(
                    priced_topic, tp[1] % n_priced, None,
                    batches.encode(batches.PRICED_V3, part.rows), header))  # fmt: skip
            if part.seen_ids:
                batch.outputs.append(OutputRecord(changelog, tp[1] % n_changelog, None,
                    self._seen.encode({"topic": tp[0], "partition": tp[1],
                                       "seen_at": from_micros(part.newest_ms * 1000),
                                       "event_ids": part.seen_ids,
                                       "offsets": part.seen_offsets}), None))  # fmt: skip
            batch.commits[tp] = part.last + 1
        for target, rows in by_target.items():
            ranges = ",".join(
                f"{t}:{p}:{a}-{b}" for (t, p), (a, b) in target_origins[target].items()
            )
            batch.outputs.append(OutputRecord(
                allocations_topic, target, None, batches.encode(batches.ALLOCATIONS_V2, rows),
                [("origin", ranges.encode()), ("rows", b"%d" % len(rows))]))  # fmt: skip
        newest = max((p.newest_ms for p in parts.values()), default=0)
        if newest:
            dedupe.expire(newest)
        return batch

    def _dead_letter(self, rejected: Rejected, record: InputRecord, now: datetime) -> OutputRecord:
        value = self._dead.encode({
            "reason": rejected.reason, "error_code": rejected.code,
            "origin": {"topic": record.topic, "partition": record.partition,
                       "offset": record.offset},
            "event_id": rejected.event_id, "key": record.key, "value": record.value,
            "rejected_at": now,
        })  # fmt: skip
        here = f"{record.topic}:{record.partition}:{record.offset}".encode()
        return OutputRecord(self.topics[2], None, record.key, value, [("origin", here)])


def priced_event_columns(event: dict[str, Any]) -> list[Any]:
    """The event's part of a ``priced/2`` row (``event_id`` to ``category``) from a usage
    event as fastavro decodes it: the payload columns as its source kind declares them
    (the same rule as the sink's decoded rows), money in nano-units, times in microseconds."""
    head, tail = payload_columns(event["source"], event["payload"])
    attrs = event["attributes"]
    return [
        event["event_id"], to_micros(event["occurred_at"]), event["source"], *head,
        *[attrs[a] or "" for a in ATTRIBUTES], attrs["tags"],
        *[to_nanos(v) if isinstance(v, Decimal) else v for v in tail],
    ]  # fmt: skip


#: the attribute columns of priced_usage, in table order
ATTRIBUTES = ("org", "team", "project", "user", "department", "session", "feature")


def _priced_row(priced: Priced, origin: tuple[str, int, int], now_us: int) -> list[Any]:
    """A ``priced/2`` row (schemas/batches.py): the event flattened, so ClickHouse reads it
    without decoding Avro (migration 0012)."""
    return [
        *priced_event_columns(priced.event), priced.total_nanos, priced.currency,
        int(priced.priced), [list(line) for line in priced.lines], priced.source,
        priced.version, *origin, now_us,
    ]  # fmt: skip
