"""The registry of source kinds (spendstream/sources/): one place names every kind, and
builders, pricing, rows and reports read it. A toy workflow engine with a pricer of its
own is registered here, test-locally, and goes through all of them."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from spendstream.builders import BuilderError, build, detect, workflow_event
from spendstream.schemas.models import (
    ApifyRun,
    Attributes,
    CustomCost,
    LlmUsage,
    UsageEvent,
    WorkflowRun,
)
from spendstream.sinks import reports, rows
from spendstream.sources import (
    WIRE_KINDS,
    PayloadFormat,
    SourceError,
    SourceKind,
    SourceRegistry,
    sources,
)
from spendstream.sources import columns as source_columns
from spendstream.sources.workflow import COLUMNS, DIMENSIONS
from spendstream.streams.pricing import Catalog, Cost, Pricer, PricingError

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
PA_RUN = {"name": "08585", "properties": {"startTime": "2026-11-20T10:00:00Z",
          "endTime": "2026-11-20T10:00:02Z", "workflow": {"name": "flow-1"}}}  # fmt: skip


def test_the_built_in_kinds_and_formats() -> None:
    registry = sources()
    assert [k.name for k in registry.kinds()] == [
        "llm", "apify", "n8n", "zapier", "make", "power_automate", "custom"]  # fmt: skip
    assert registry.format_names() == [
        "event", "anthropic-batch", "openai-batch", "gemini-batch", "gemini", "openai-chat",
        "openai-responses", "openai-embedding", "anthropic", "apify", "n8n", "zapier",
        "make", "power_automate",
    ]  # fmt: skip
    assert [k.name for k in registry.sub_kinds("workflow")] == [
        "n8n", "zapier", "make", "power_automate"]  # fmt: skip
    assert WIRE_KINDS == ("llm", "apify", "workflow", "custom")
    # what reports could group by before the registry, no more, no less
    assert set(reports.dimensions()) == {
        "source", "provider", "model", "org", "team", "project", "user", "department",
        "feature", "platform", "workflow", "actor", "category"}  # fmt: skip


def test_power_automate_has_one_canonical_name_and_an_alias() -> None:
    by_alias = build(PA_RUN, "power-automate")  # the CLI's old --source name
    assert by_alias == build(PA_RUN, "power_automate") == build(PA_RUN)
    assert by_alias.payload.platform == "power_automate"
    assert detect(PA_RUN) == "power_automate"
    run = WorkflowRun(platform="power-automate", workflow_id="f", execution_id="x")
    assert run.platform == "power_automate"  # an event naming it by alias is read canonical
    with pytest.raises(ValueError, match="unknown workflow engine 'nope'; use one of n8n"):
        WorkflowRun(platform="nope", workflow_id="f", execution_id="x")


def test_a_catalog_key_by_alias_prices_the_canonical_engine(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text('version: "t"\nworkflow:\n  power-automate:\n    premium: '
                    '{per_execution: "0.5"}\n')  # fmt: skip
    catalog = Catalog.for_settings(path)
    assert "power-automate" not in catalog.workflow
    assert catalog.workflow["power_automate"]["premium"] == {"per_execution": Decimal("0.5")}
    event = build(PA_RUN, plan="premium")
    assert Pricer(catalog).price(event).total == Decimal("0.5")
    assert Pricer(catalog).price(build(PA_RUN)).total == Decimal("0.006")  # bundled default


def test_unknown_source_names_say_what_exists() -> None:
    with pytest.raises(BuilderError, match="unknown source 'nope'; use one of event, "):
        build({"a": 1}, "nope")
    with pytest.raises(BuilderError, match="pass --source .*power_automate"):
        detect({"a": 1})
    with pytest.raises(SourceError, match="unknown source kind 'nope'"):
        sources().kind("nope")


def _toy_kind(**changes: object) -> SourceKind:
    fields: dict[str, object] = {
        "name": "toyflow", "wire": "workflow", "payload": WorkflowRun,
        "price": lambda pricer, payload, when: None, "columns": COLUMNS,
    }  # fmt: skip
    fields.update(changes)
    return SourceKind(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"wire": "fax"}, "not a branch of the UsageEvent payload union"),
        ({"payload": LlmUsage}, "carries a WorkflowRun, not a LlmUsage"),
        ({"name": "toy", "wire": "custom", "payload": CustomCost}, "must be named 'custom'"),
        ({"name": "n8n"}, "source kind name 'n8n' is taken"),
        ({"aliases": ("make",)}, "source kind name 'make' is taken"),
        ({"aliases": ("toyflow",)}, "source kind name 'toyflow' is taken"),
        (
            {"formats": (PayloadFormat("t", build), PayloadFormat("t", build))},
            "format name 't' is taken",
        ),
        ({"formats": (PayloadFormat("apify", build),)}, "format name 'apify' is taken"),
        ({"formats": (PayloadFormat("event", build),)}, "format name 'event' is taken"),
    ],
)
def test_register_refuses_what_would_break(changes: dict[str, object], message: str) -> None:
    with pytest.raises(SourceError, match=message):
        sources().register(_toy_kind(**changes))
    assert sources().find("toyflow") is None  # nothing half-registered


def test_a_kind_naming_a_column_the_sink_lacks_is_refused() -> None:
    kind = _toy_kind(columns={**COLUMNS, "colour": "platform"})
    with pytest.raises(SourceError, match=r"fills \['colour'\], not payload columns"):
        source_columns.payload_filler(kind)


# --- a toy engine with a pricer of its own --------------------------------------------
def from_toy_run(run: dict, **kwargs: object) -> UsageEvent:
    fields = {"workflow_id": run["toy"], "execution_id": run["id"],
              "duration_ms": run["ms"]}  # fmt: skip
    return workflow_event("toyflow", "toy run", fields, NOW, **kwargs)


def price_by_the_second(pricer: Pricer, run: WorkflowRun, when: datetime | None) -> Cost:
    """Not a catalog plan: 0.001 a started second."""
    seconds = -(-run.duration_ms // 1000)
    return Cost(Decimal(seconds) / 1000, "USD", [], "toy:seconds", "toy 1")


TOY = SourceKind(
    name="toyflow",
    wire="workflow",
    payload=WorkflowRun,
    price=price_by_the_second,
    columns={**COLUMNS, "status": lambda p: p["status"].upper()},
    formats=(PayloadFormat("toyflow", from_toy_run, lambda d: "toy" in d, aliases=("toy",)),),
    dimensions={**DIMENSIONS, "toy": "workflow_id"},
    aliases=("toy-flow",),
)


@pytest.fixture
def toy() -> Iterator[SourceKind]:
    sources().register(TOY)
    try:
        yield TOY
    finally:
        sources().unregister("toyflow")
    assert sources().find("toy-flow") is None and "toyflow" not in sources().format_names()


def test_a_toy_engine_is_detected_built_priced_and_rowed(toy: SourceKind) -> None:
    run = {"toy": "nightly", "id": "t-9", "ms": 2500}
    assert detect(run) == "toyflow"
    event = build(run, attributes=Attributes(team="ops"))
    assert build(run, "toy", attributes=Attributes(team="ops")) == event
    assert (event.payload.platform, event.event_id) == ("toyflow", "toyflow:t-9")
    cost = Pricer().price(event)
    assert (cost.total, cost.source) == (Decimal("0.003"), "toy:seconds")

    decoded = UsageEvent.decode(event.encode())  # on the wire: a workflow event
    assert decoded == event
    priced = {"cost": cost.total, "currency": "USD", "priced": True, "components": [],
              "price_source": cost.source, "price_version": cost.version,
              "origin": {"topic": "usage.workflow", "partition": 0, "offset": 1},
              "priced_at": NOW}  # fmt: skip
    row = rows.priced_row_of(priced, event.to_avro() | {"payload": event.payload.model_dump(
        exclude={"kind"})}, ("usage.priced", 0, 0))  # fmt: skip
    got = dict(zip(rows.PRICED_COLUMNS, row, strict=True))
    assert got["platform"] == "toyflow" and got["status"] == "SUCCESS"  # its own column rule
    assert got["duration_ms"] == 2500 and got["cost"] == Decimal("0.003")
    assert reports.column_of("toy") == "workflow_id"


def test_rows_of_an_engine_this_process_does_not_know_are_still_stored() -> None:
    """A worker with a newer engine registered priced it; the sink stores its row with the
    workflow columns rather than dead-lettering it."""
    event = {"event_id": "e", "occurred_at": NOW, "source": "workflow",
             "attributes": Attributes().model_dump(),
             "payload": {"platform": "elsewhere", "workflow_id": "w", "execution_id": "x",
                         "status": "ok", "tasks": 3, "operations": 0, "duration_ms": 0,
                         "plan": None}}  # fmt: skip
    priced = {"cost": Decimal(1), "currency": "USD", "priced": True, "components": [],
              "price_source": "s", "price_version": "v",
              "origin": {"topic": "usage.workflow", "partition": 0, "offset": 1},
              "priced_at": NOW}  # fmt: skip
    got = dict(zip(rows.PRICED_COLUMNS, rows.priced_row_of(priced, event, ("t", 0, 0)),
                   strict=True))  # fmt: skip
    assert (got["platform"], got["tasks"]) == ("elsewhere", 3)


def test_pricing_an_unregistered_kind_is_a_pricing_error() -> None:
    run = WorkflowRun.model_construct(platform="gone", workflow_id="w", execution_id="x",
                                      kind="workflow")  # fmt: skip
    event = UsageEvent.model_construct(event_id="e", occurred_at=NOW, source="workflow",
                                       attributes=Attributes(), payload=run)  # fmt: skip
    with pytest.raises(PricingError, match="no source kind registered") as caught:
        Pricer().price(event)
    assert caught.value.code == "unknown_source"


def test_lookups_are_by_name() -> None:
    """The per-event lookups take a kind from a dict by name (no scan of the kinds)."""
    registry = SourceRegistry()
    calls = []

    class Counting(dict):  # type: ignore[type-arg]
        def get(self, key, default=None):  # type: ignore[no-untyped-def]
            calls.append(key)
            return super().get(key, default)

    registry._names = Counting(sources()._names)
    assert registry.of_payload("llm", {"model": "m"}).name == "llm"
    assert registry.of_payload("workflow", {"platform": "make"}).name == "make"
    assert registry.of_payload("workflow", {"platform": "power-automate"}).name == "power_automate"
    assert calls == ["llm", "make", "power-automate"]


def test_installed_packages_register_kinds_through_entry_points(monkeypatch) -> None:
    """A package outside this one names its module (or its SourceKind) in the entry point
    group ``spendstream.sources``; a fresh registry loads it after the built-in kinds."""
    from spendstream.sources import registry as module

    class Point:
        def __init__(self, loaded: object) -> None:
            self.name, self.value, self.loaded = "toy", "toy_pkg:KIND", loaded

        def load(self) -> object:
            return self.loaded

    def points(group: str) -> list[Point]:
        assert group == "spendstream.sources"
        return [Point(TOY)]

    monkeypatch.setattr(module.metadata, "entry_points", points)
    fresh = SourceRegistry()
    module._load_builtin_and_plugins(fresh)
    assert fresh.kind("toy-flow") is TOY and fresh.format("toyflow").name == "toyflow"
    assert len(fresh.kinds()) == len(sources().kinds()) + 1

    monkeypatch.setattr(module.metadata, "entry_points", lambda group: [Point(object())])
    with pytest.raises(SourceError, match="is not a SourceKind nor a module defining KIND"):
        module._load_builtin_and_plugins(SourceRegistry())


def _row(event: UsageEvent) -> dict[str, object]:
    priced = {"cost": Decimal(1), "currency": "USD", "priced": True, "components": [],
              "price_source": "s", "price_version": "v",
              "origin": {"topic": "t", "partition": 0, "offset": 1}, "priced_at": NOW}  # fmt: skip
    record = event.to_avro()
    record["payload"] = record["payload"][1]
    return dict(zip(rows.PRICED_COLUMNS, rows.priced_row_of(priced, record, ("t", 0, 0)),
                    strict=True))  # fmt: skip


def test_each_built_in_kind_fills_its_own_columns_and_only_those() -> None:
    from spendstream.schemas.models import ApifyRun

    def event(source: str, payload: object) -> UsageEvent:
        return UsageEvent(event_id="e", occurred_at=NOW, source=source,
                          attributes=Attributes(team="t"), payload=payload)  # fmt: skip

    llm = _row(event("llm", LlmUsage(provider="openai", model="m", input_tokens=9,
                                     service_tier="flex", batch=True)))  # fmt: skip
    apify = _row(event("apify", ApifyRun(actor_id="a/b", run_id="r", compute_units="1.5",
                                         results=4)))  # fmt: skip
    flow = _row(event("workflow", WorkflowRun(platform="zapier", workflow_id="z",
                                              execution_id="x", tasks=3)))  # fmt: skip
    custom = _row(event("custom", CustomCost(amount="2", currency="EUR", category="gpu")))
    filled = {name: {c for c, v in row.items() if c in source_columns.PAYLOAD_DEFAULTS
                     and v != source_columns.PAYLOAD_DEFAULTS[c]}
              for name, row in (("llm", llm), ("apify", apify), ("workflow", flow),
                                ("custom", custom))}  # fmt: skip
    assert filled == {
        "llm": {"provider", "model", "operation", "input_tokens", "service_tier", "batch"},
        "apify": {"actor_id", "run_id", "status", "compute_units", "results"},
        "workflow": {"platform", "workflow_id", "execution_id", "status", "tasks"},
        "custom": {"category"},
    }
    assert (llm["service_tier"], llm["batch"], llm["team"]) == ("flex", 1, "t")
    assert (apify["compute_units"], flow["tasks"], custom["category"]) == (Decimal("1.5"), 3, "gpu")


def test_the_payload_columns_are_in_priced_usage_order_and_priced2_uses_the_kind_rule(
    toy: SourceKind,
) -> None:
    """One rule for both paths: the payload columns keep priced_usage's order, and a
    priced/2 row's payload part is what the kind declares (the toy engine's ``status``
    comes from a function), money in nano-units."""
    from spendstream.schemas import batches
    from spendstream.schemas.avro import codec
    from spendstream.sinks.rows import PRICED_COLUMNS
    from spendstream.streams.price_stage import priced_event_columns

    assert tuple(c for c in PRICED_COLUMNS if c in source_columns.PAYLOAD_DEFAULTS) == (
        source_columns.PAYLOAD_COLUMNS
    )

    def priced2(source: str, payload: object) -> dict[str, object]:
        e = UsageEvent(event_id="e", occurred_at=NOW, source=source,
                       attributes={"team": "t"}, payload=payload)  # fmt: skip
        values = priced_event_columns(codec("UsageEvent").decode(e.encode()))
        return dict(zip(batches.PRICED2_COLUMNS, values, strict=False))

    row = priced2("workflow", WorkflowRun(platform="toyflow", workflow_id="w",
                                         execution_id="x", status="ok", tasks=3))  # fmt: skip
    assert row["status"] == "OK" and row["platform"] == "toyflow" and row["tasks"] == 3
    assert row["team"] == "t" and row["provider"] == ""
    apify = priced2("apify", ApifyRun(actor_id="a/b", run_id="r", compute_units="1.5"))
    assert apify["compute_units_nanos"] == 1_500_000_000 and apify["actor_id"] == "a/b"
