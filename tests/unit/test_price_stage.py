"""The price stage in one process, without a broker: a batch of raw records in, the
batch records, dead letters, changelog and commits out; and the same decisions as the
reference ``UsageProcessor`` (processor.py) on every kind of input."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spendstream.schemas import batches
from spendstream.schemas.avro import codec
from spendstream.schemas.budget import BudgetDefinition
from spendstream.schemas.models import (
    ApifyRun,
    Attributes,
    CustomCost,
    LlmUsage,
    SourcePosition,
    UsageEvent,
    WorkflowRun,
    to_micros,
)
from spendstream.schemas.money import from_nanos, to_nanos
from spendstream.streams.compiled_pricing import CompiledPricer
from spendstream.streams.dedupe import DedupeState
from spendstream.streams.matching import BudgetRegistry
from spendstream.streams.partitioner import partition_for
from spendstream.streams.price_loop import InputRecord
from spendstream.streams.price_stage import PriceRules, PriceStage, Rejected, fast_valid_llm
from spendstream.streams.pricing import Pricer
from spendstream.streams.processor import UsageProcessor

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
BUDGETS = [
    BudgetDefinition(budget_id="org", name="org", limit="1000", scope={"org": "acme"}),
    BudgetDefinition(budget_id="ml", name="ml", parent_id="org", limit="100",
                     scope={"team": "ml"}),
    BudgetDefinition(budget_id="daily-openai", name="d", limit="50", period="daily",
                     scope={"provider": "openai"}),
    BudgetDefinition(budget_id="eur", name="eur", limit="50", currency="EUR",
                     scope={"team": "web"}),
]  # fmt: skip
PARTITIONS = {"usage.priced": 4, "cost-allocations": 4, "usage.dlq": 4, "seen": 4}


def llm(i: int, *, team: str = "ml", model: str = "gpt-4o-mini", when: datetime | None = None,
        event_id: str | None = None, **tokens: int) -> UsageEvent:  # fmt: skip
    return UsageEvent(
        event_id=event_id or f"e{i}", occurred_at=when or NOW - timedelta(minutes=i),
        source="llm", attributes=Attributes(org="acme", team=team),
        payload=LlmUsage(provider="openai", model=model, input_tokens=tokens.get("inp", 1000),
                         output_tokens=tokens.get("out", 100),
                         cache_read_tokens=tokens.get("cached", 0)),
    )  # fmt: skip


def record(event: UsageEvent | bytes | None, offset: int, *, topic: str = "usage.llm",
           partition: int = 0, ts: datetime = NOW) -> InputRecord:  # fmt: skip
    value = event.encode() if isinstance(event, UsageEvent) else event
    return InputRecord(topic, partition, offset, int(ts.timestamp() * 1000), b"k", value)


def stage(late_periods: int | None = 1) -> PriceStage:
    rules = PriceRules(BudgetRegistry(BUDGETS), CompiledPricer(), late_periods=late_periods)
    dedupe = DedupeState(86400)
    for p in range(4):
        for t in ("usage.llm", "usage.apify", "usage.workflow", "usage.custom"):
            dedupe.assign((t, p), 0, [])
    return PriceStage(rules, dedupe, priced_topic="usage.priced",
                      allocations_topic="cost-allocations", dlq_topic="usage.dlq",
                      changelog_topic="seen", partitions=PARTITIONS.__getitem__)  # fmt: skip


def outputs(batch, topic):
    return [o for o in batch.outputs if o.topic == topic]


def test_a_batch_becomes_batch_records_dead_letters_changelog_and_commits():
    s = stage()
    events = [llm(1), llm(2, team="web"), llm(3), llm(1)]  # the last: a duplicate of e1
    records = [record(e, 10 + i) for i, e in enumerate(events)]
    records += [record(b"\x00garbage", 14), record(llm(5, model="gpt-99-imaginary"), 15),
                record(llm(6, when=NOW + timedelta(hours=1)), 16)]  # fmt: skip
    batch = s.process(records, NOW)
    assert batch.commits == {("usage.llm", 0): 17}
    assert batch.counters["priced"] == 3 and batch.counters["duplicates"] == 1
    assert batch.counters["dlq"] == 3 and batch.counters["allocations"] == 9
    # per reason too, for /metrics (spendstream_events_dead_lettered_total{reason})
    assert [batch.counters[f"dlq_{r}"] for r in ("decode", "unknown_model")] == [1, 1]
    (priced,) = outputs(batch, "usage.priced")
    assert priced.partition == 0 and priced.headers == [("origin", b"usage.llm:0:10-16"),
                                                        ("rows", b"3")]  # fmt: skip
    version, items = batches.decode(priced.value)
    assert version == batches.PRICED_V3
    P = batches.P2
    # the event flattened into priced_usage's columns (ClickHouse reads it: migration 0012)
    assert [i[P["event_id"]] for i in items] == ["e1", "e2", "e3"]
    assert items[1][P["team"]] == "web" and items[0][P["model"]] == events[0].payload.model
    assert items[0][P["occurred_at_us"]] == to_micros(events[0].occurred_at)
    assert items[0][P["input_tokens"]] == events[0].payload.input_tokens
    assert [i[P["origin_offset"]] for i in items] == [10, 11, 12]
    want = Pricer().price(events[0])
    assert items[0][P["cost_nanos"]] == to_nanos(want.total)
    assert [(c[0], c[3]) for c in items[0][P["components"]]] == [
        (c.name, to_nanos(c.amount)) for c in want.components]  # fmt: skip
    allocs = {}
    A = batches.A
    for out in outputs(batch, "cost-allocations"):
        # the sink counts rows from this header without decoding the record
        assert dict(out.headers or [])["rows"] == b"%d" % len(batches.decode(out.value)[1])
        for a in batches.decode(out.value)[1]:
            assert out.partition == partition_for(a[A["budget_id"]].encode(), 4)
            allocs[f"{a[A['event_id']]}/{a[A['budget_id']]}"] = a
    # e1, e3: org, ml, daily-openai; e2 (web): org, daily-openai, eur: the EUR budget gets
    # the USD amount as billed (the aggregator converts it)
    assert sorted(allocs) == sorted(["e1/org", "e1/ml", "e1/daily-openai", "e3/org", "e3/ml",
                                     "e3/daily-openai", "e2/org", "e2/daily-openai",
                                     "e2/eur"])  # fmt: skip
    assert allocs["e2/eur"][A["currency"]] == "USD"
    assert allocs["e1/ml"][A["amount_nanos"]] == to_nanos(want.total)
    assert allocs["e1/ml"][A["matched_via"]] == "ml"
    assert allocs["e1/org"][A["occurred_at_us"]] == to_micros(events[0].occurred_at)
    dead = [codec("DeadLetter").decode(o.value) for o in outputs(batch, "usage.dlq")]
    assert [d["error_code"] for d in dead] == ["decode", "unknown_model", "future"]
    assert [d["origin"]["offset"] for d in dead] == [14, 15, 16]
    (seen,) = outputs(batch, "seen")
    log = codec("SeenEvents").decode(seen.value)
    assert log["event_ids"] == ["e1", "e2", "e3"] and log["offsets"] == [10, 11, 12]


def billed(i: int, **fields) -> UsageEvent:
    """An OpenAI gpt-4o-mini call of 1M prompt tokens and 100k output tokens."""
    return UsageEvent(
        event_id=f"b{i}", occurred_at=NOW - timedelta(minutes=i), source="llm",
        attributes=Attributes(org="acme", team="ml"),
        payload=LlmUsage(provider="openai", model="gpt-4o-mini", input_tokens=1_000_000,
                         output_tokens=100_000, **fields),
    )  # fmt: skip


def test_batch_and_tiers_priced_on_the_hot_path_and_an_unknown_tier_counted_not_dropped():
    s = stage()
    events = [billed(1), billed(2, batch=True), billed(3, service_tier="flex"),
              billed(4, service_tier="platinum")]  # fmt: skip
    batch = s.process([record(e, 20 + i) for i, e in enumerate(events)], NOW)
    assert batch.counters["priced"] == 4 and batch.counters["dlq"] == 0
    assert batch.counters["unknown_tier"] == 1  # -> spendstream_unknown_service_tiers_total
    assert not any(k.startswith("price_fallback") for k in batch.counters)  # compiled rates
    (priced,) = outputs(batch, "usage.priced")
    P = batches.P2
    rows = batches.decode(priced.value)[1]
    # gpt-4o-mini: $0.15/Mtok in, $0.60/Mtok out -> 0.15 + 0.06 = $0.21 standard; batch
    # (Batch API) and flex (billed at batch rates) half: $0.105; an unknown tier: standard
    assert [from_nanos(r[P["cost_nanos"]]) for r in rows] == [
        Decimal("0.21"), Decimal("0.105"), Decimal("0.105"), Decimal("0.21")]  # fmt: skip
    assert [r[P["price_source"]] for r in rows] == [
        "genai-prices:openai", "genai-prices:openai", "genai-prices:openai",
        "genai-prices:openai+unknown_tier:platinum"]  # fmt: skip
    assert [(r[P["batch"]], r[P["service_tier"]]) for r in rows] == [
        (0, ""), (1, ""), (0, "flex"), (0, "platinum")]  # fmt: skip


def test_a_replayed_position_is_priced_again_and_a_copy_elsewhere_is_not():
    s = stage()
    s.process([record(llm(1), 10)], NOW)
    again = s.process([record(llm(1), 10), record(llm(1), 11)], NOW)
    assert again.counters["priced"] == 1 and again.counters["duplicates"] == 1
    # a new owner loads the changelog below its committed offset only
    d = DedupeState(86400)
    now_ms = int(NOW.timestamp() * 1000)
    assert d.assign(("usage.llm", 0), 11, [(now_ms, ["e1", "e9"], [10, 11])]) == 1
    assert d.first_seen(("usage.llm", 0), "e1") == 10
    assert d.first_seen(("usage.llm", 0), "e9") is None  # at the committed offset: replayed


def test_too_late_event_is_priced_counts_nowhere_and_is_dead_lettered():
    s = stage(late_periods=0)
    old = llm(1, when=NOW - timedelta(days=40))
    batch = s.process([record(old, 3)], NOW)
    assert len(outputs(batch, "usage.priced")) == 1
    assert outputs(batch, "cost-allocations") == []
    (dead,) = outputs(batch, "usage.dlq")
    assert codec("DeadLetter").decode(dead.value)["error_code"] == "too_late"
    assert batch.counters["too_late"] == 1


def test_dedupe_forgets_after_the_window():
    d = DedupeState(window_s=100)
    tp = ("usage.llm", 0)
    d.assign(tp, 0, [])
    d.mark(tp, "old", 1, 1_000)
    d.mark(tp, "new", 2, 150_000)
    d.expire(200_000)
    assert d.first_seen(tp, "old") is None and d.first_seen(tp, "new") == 2


# --- the same decisions as the reference --------------------------------------------------
def reference(event_bytes: bytes | None, offset: int, late: int | None = 1):
    proc = UsageProcessor(Pricer(), BudgetRegistry(BUDGETS), late_periods=late)
    pos = SourcePosition(topic="usage.llm", partition=0, offset=offset)
    decoded = proc.decode(b"k", event_bytes, pos, NOW)
    if not isinstance(decoded, UsageEvent):
        return ("dead", decoded.error_code, decoded.reason)
    out = proc.process(decoded, pos, NOW, raw=event_bytes, arrived=NOW)
    if out.priced is None:
        return ("dead", out.dead.error_code, out.dead.reason)
    allocs = sorted((a.budget_id, a.period_key, a.amount, a.matched_via) for a in out.allocations)
    return ("priced", out.priced.cost, out.priced.currency,
            [(c.name, c.quantity, c.amount) for c in out.priced.components], allocs,
            out.dead.error_code if out.dead else None)  # fmt: skip


def fast(event_bytes: bytes | None, offset: int, late: int | None = 1):
    rules = PriceRules(BudgetRegistry(BUDGETS), CompiledPricer(), late_periods=late)
    rec = record(event_bytes, offset)
    decoded = rules.decode(rec, NOW)
    if isinstance(decoded, Rejected):
        return ("dead", decoded.code, decoded.reason)
    priced = rules.price(*decoded)
    if isinstance(priced, Rejected):
        return ("dead", priced.code, priced.reason)
    allocs, late_dead = rules.allocate(priced, ("usage.llm", 0, offset), to_micros(NOW))
    A = batches.A
    return ("priced", from_nanos(priced.total_nanos), priced.currency,
            [(n, from_nanos(q), from_nanos(a)) for n, q, _, a in priced.lines],
            sorted((a[A["budget_id"]], a[A["period_key"]], from_nanos(a[A["amount_nanos"]]),
                    a[A["matched_via"]]) for a in allocs),
            late_dead.code if late_dead else None)  # fmt: skip


def payloads(rng: random.Random):
    models = ["gpt-4o-mini", "gpt-4o", "claude-sonnet-4-5", "gemini-2.5-flash", "no-such-model"]
    kind = rng.random()
    if kind < 0.6:
        inp = rng.randrange(0, 50_000)
        return "llm", LlmUsage(
            provider=rng.choice(["openai", "anthropic", "google"]), model=rng.choice(models),
            input_tokens=inp, cache_read_tokens=rng.randrange(0, inp + 1) if rng.random() < .3
            else 0, output_tokens=rng.randrange(0, 5000))  # fmt: skip
    if kind < 0.75:
        return "apify", ApifyRun(actor_id="apify/x", run_id="r",
                                 compute_units=Decimal(rng.randrange(0, 999)) / 100)  # fmt: skip
    if kind < 0.9:
        return "workflow", WorkflowRun(platform=rng.choice(["n8n", "zapier", "make"]),
                                       workflow_id="w", execution_id="x",
                                       tasks=rng.randrange(0, 30))  # fmt: skip
    return "custom", CustomCost(amount=Decimal(rng.randrange(1, 999)) / 7,
                                currency=rng.choice(["USD", "EUR"]))  # fmt: skip


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
@given(st.integers(0, 2**32), st.sampled_from([None, 0, 1]))
def test_fast_rules_decide_as_the_reference(seed, late):
    rng = random.Random(seed)
    source, payload = payloads(rng)
    when = NOW - timedelta(days=rng.choice([0, 0, 1, 35, 70]), minutes=rng.randrange(600))
    if rng.random() < 0.05:
        when = NOW + timedelta(hours=1)
    team = rng.choice(["ml", "web", " ml ", "data"])
    event = UsageEvent.model_construct(
        event_id=rng.choice(["e1", " e2", "e3 "]), occurred_at=when, source=source,
        attributes=Attributes.model_construct(org="acme", team=team, project=None, user=None,
                                              department=None, session=None, feature=None,
                                              tags={}),
        payload=payload, producer=None)  # fmt: skip
    raw = codec("UsageEvent").encode(event.to_avro())
    assert fast(raw, 7, late) == reference(raw, 7, late)


def test_fast_validation_never_accepts_what_pydantic_would_change_or_refuse():
    """Random LLM events near every rule's edge: whatever the fast check accepts, pydantic
    accepts unchanged (so skipping pydantic changes nothing)."""
    rng = random.Random(11)
    texts = ["a", "", " a", "a ", "\u2003x", "x\n", "é" * 256, "y" * 257, "z" * 128, "z" * 129]
    counts = [0, 1, 7, 10**15, 10**15 + 1, -1]
    avro = codec("UsageEvent")
    accepted = refused = 0

    def pick(good, options):  # mostly valid, so both outcomes happen often
        return good if rng.random() < 0.93 else rng.choice(options)

    for _ in range(4000):
        attrs = {
            n: pick(None, texts)
            for n in ("org", "team", "project", "user", "department", "session", "feature")
        }
        attrs["tags"] = pick({"k": "v"}, [{}, {" k": "v"}, {"k": "v "}, {"": "v"},
                                          {f"t{i}": "v" for i in range(65)}])  # fmt: skip
        tokens = {n: pick(rng.randrange(0, 100), counts) for n in (
            "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
            "reasoning_tokens", "input_audio_tokens", "output_audio_tokens", "images")}  # fmt: skip
        tokens["input_tokens"] += 200
        tokens["output_tokens"] += 100
        tokens["cache_write_1h_tokens"] = pick(
            min(tokens["cache_write_tokens"], rng.randrange(0, 3)), [*counts, 101]
        )
        payload = {"provider": pick("openai", texts), "model": pick("m", texts),
                   "operation": pick("chat", ["embedding", "bogus"]), **tokens,
                   "image_size": pick(None, texts), "request_id": pick(None, texts),
                   "service_tier": pick(None, [*texts, "flex", "p" * 64, "p" * 65]),
                   "batch": pick(False, [True])}  # fmt: skip
        event = {"event_id": pick("e1", texts), "source": "llm",
                 "occurred_at": pick(NOW, [datetime(1969, 1, 1, tzinfo=UTC),
                                           datetime(2300, 1, 1, tzinfo=UTC)]),
                 "attributes": attrs, "payload": ("dev.spendstream.LlmUsage", payload),
                 "producer": pick(None, texts)}  # fmt: skip
        rec = avro.decode(avro.encode(event))  # as the stage sees it
        if not fast_valid_llm(rec):
            refused += 1
            continue
        accepted += 1
        model = UsageEvent.from_avro(rec)  # raises if pydantic refuses
        normal = model.to_avro()
        normal["payload"] = normal["payload"][1]
        assert normal == rec
    assert accepted > 50 and refused > 50
