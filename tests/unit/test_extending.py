"""docs/extending.md stays true: its "add a source kind" walk-through is run as written.

The doc's engine module and catalog are executed from the doc's own code blocks; the
engine is registered the way the package registers a module's ``KIND``; then one run
record goes the whole way in-process: detected, built, priced by the price stage (driven
without a broker), and turned into the sink's priced_usage and cost_allocations rows.
No other module is edited for it, which is the point of the registry."""

from __future__ import annotations

import re
import types
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from spendstream.builders import build, detect
from spendstream.schemas import batches
from spendstream.schemas.budget import BudgetDefinition
from spendstream.sinks import reports, rows
from spendstream.sources import SourceKind, sources
from spendstream.streams.compiled_pricing import CompiledPricer
from spendstream.streams.dedupe import DedupeState
from spendstream.streams.matching import BudgetRegistry
from spendstream.streams.price_loop import InputRecord
from spendstream.streams.price_stage import PriceRules, PriceStage
from spendstream.streams.pricing import Catalog

DOC = Path(__file__).resolve().parents[2] / "docs" / "extending.md"
NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
RUN = {"acmeFlowRunId": "r-1", "flow": "invoices", "state": "SUCCEEDED", "steps": 12}


def doc_block(language: str, first_line: str) -> str:
    """The doc's fenced ``language`` block that starts with ``first_line``."""
    for found in re.finditer(rf"```{language}\n(.*?)```", DOC.read_text(), re.S):
        if found.group(1).startswith(first_line):
            return found.group(1)
    raise AssertionError(f"docs/extending.md has no {language} block starting {first_line!r}")


def section(title: str) -> str:
    text = DOC.read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


@pytest.fixture
def acme_flow() -> Iterator[SourceKind]:
    """The doc's module, executed as written and registered as the package would."""
    module = types.ModuleType("spendstream.sources.acme_flow")
    exec(compile(doc_block("python", "# spendstream/sources/acme_flow.py"), str(DOC), "exec"),
         module.__dict__)  # fmt: skip
    kind = module.KIND
    assert isinstance(kind, SourceKind)
    sources().register(kind)
    try:
        yield kind
    finally:
        sources().unregister(kind.name)


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    path = tmp_path / "prices.yaml"
    path.write_text(doc_block("yaml", "# your price catalog"))
    return Catalog.for_settings(path)


def price_stage(catalog: Catalog) -> PriceStage:
    budgets = [BudgetDefinition(budget_id="flows", name="flows", limit="100",
                                scope={"platform": "acme_flow"})]  # fmt: skip
    dedupe = DedupeState(86400)
    dedupe.assign(("usage.workflow", 0), 0, [])
    return PriceStage(
        PriceRules(BudgetRegistry(budgets), CompiledPricer(catalog)), dedupe,
        priced_topic="usage.priced", allocations_topic="cost-allocations",
        dlq_topic="usage.dlq", changelog_topic="seen", partitions=lambda topic: 1,
    )  # fmt: skip


def test_the_doc_engine_is_detected_built_priced_and_stored(acme_flow, catalog) -> None:
    assert detect(RUN) == "acme_flow"
    event = build(RUN, occurred_at=NOW, attributes={"team": "finance"})
    assert (event.source, event.payload.platform) == ("workflow", "acme_flow")
    assert event.payload.tasks == 12
    assert event.event_id == "acme_flow:r-1"
    assert build(RUN, "acme-flow", occurred_at=NOW) == build(RUN, occurred_at=NOW)  # the alias

    record = InputRecord("usage.workflow", 0, 7, int(NOW.timestamp() * 1000), b"k", event.encode())
    batch = price_stage(catalog).process([record], NOW)
    assert batch.counters["priced"] == 1 and batch.counters["dlq"] == 0
    [priced] = [o for o in batch.outputs if o.topic == "usage.priced"]
    [allocations] = [o for o in batch.outputs if o.topic == "cost-allocations"]

    [row] = rows.priced_rows(priced.value, ("usage.priced", 0, 0))
    got = dict(zip(rows.PRICED_COLUMNS, row, strict=True))
    assert got["platform"] == "acme_flow" and got["workflow_id"] == "invoices"
    assert got["tasks"] == 12 and got["status"] == "succeeded" and got["team"] == "finance"
    assert got["cost"] == Decimal("0.03")  # 12 steps x 0.0025, the doc's default plan
    assert got["price_source"] == "catalog:acme_flow"
    assert got["provider"] == "" and got["actor_id"] == ""  # other kinds' columns: defaults
    [allocation] = rows.allocation_rows(allocations.value, ("cost-allocations", 0, 0))
    alloc = dict(zip(rows.ALLOCATION_COLUMNS, allocation, strict=True))
    assert (alloc["budget_id"], alloc["source"]) == ("flows", "workflow")
    assert alloc["amount"] == Decimal("0.03")
    assert batches.is_batch(priced.value)

    assert reports.column_of("platform") == "platform"  # its report dimensions, for free


def test_the_doc_engine_prices_an_aliased_platform_and_a_plan(acme_flow, catalog) -> None:
    event = build({**RUN, "acmeFlowRunId": "r-2"}, plan="team", occurred_at=NOW)
    data = event.model_dump(mode="json")
    data["payload"]["platform"] = "acme-flow"  # an event that names the engine by alias
    again = type(event).model_validate(data)
    assert again.payload.platform == "acme_flow"
    cost = CompiledPricer(catalog).pricer.price(again)
    assert cost.total == Decimal("0.024")  # the team plan: 12 x 0.0020


def test_cli_help_and_detect_error_list_the_doc_engine(acme_flow) -> None:
    assert "acme_flow" in sources().format_names()
    with pytest.raises(ValueError, match="acme_flow"):
        detect({"nothing": "known"})


def test_the_doc_names_what_the_code_has() -> None:
    text = section("Add a source kind")
    import spendstream.builders as builders
    import spendstream.sources as package
    import spendstream.sources.workflow as workflow

    for name in ("register", "sources", "SourceKind", "PayloadFormat"):
        assert f"`{name}" in text and hasattr(package, name)
    assert "`engine()`" in text and callable(workflow.engine)
    assert "`workflow_event()`" in text and callable(builders.workflow_event)
    assert set(sources().dimensions()) <= set(reports.dimensions())
    # every field the doc's table describes is a field of SourceKind
    described = set(re.findall(r"^\| `(\w+)`(?:, `(\w+)`)? \|", text, re.M))
    fields = {name for pair in described for name in pair if name}
    assert fields and fields <= set(SourceKind.__dataclass_fields__)
    assert "## Add a sink table" in DOC.read_text()


def test_the_alert_walkthrough_names_real_places() -> None:
    """The alert steps point at functions and lists that exist and hold today's kinds."""
    text = section("Add an alert kind")
    from typing import get_args

    from spendstream.cli import alerts as cli
    from spendstream.schemas.models import BudgetAlert
    from spendstream.sinks.notify import config, messages
    from spendstream.streams import aggregation, observability

    for name in ("tier_alerts", "trend_alerts", "_firing", "AlertPolicy"):
        assert f"`{name}" in text and hasattr(aggregation, name)
    kinds = set(get_args(BudgetAlert.model_fields["kind"].annotation))
    assert kinds == set(get_args(config.Kind)) == set(cli.ALERT_KINDS)
    assert kinds == set(observability.ALERT_KINDS)
    assert callable(messages.headline) and "`headline()`" in text
    assert all(f"`{kind}`" in text for kind in kinds)


def test_the_doc_module_dropped_into_the_package_is_registered(tmp_path, monkeypatch) -> None:
    """Step 1 as a file: a module in spendstream/sources/ defining KIND is found and
    registered with the built-in kinds (here the package's path is extended to a temporary
    folder instead of writing into the source tree)."""
    import sys

    import spendstream.sources as package
    from spendstream.sources import SourceRegistry
    from spendstream.sources.registry import _load_builtin_and_plugins

    (tmp_path / "acme_flow.py").write_text(
        doc_block("python", "# spendstream/sources/acme_flow.py")
    )
    monkeypatch.setattr(package, "__path__", [*package.__path__, str(tmp_path)])
    monkeypatch.delitem(sys.modules, "spendstream.sources.acme_flow", raising=False)
    try:
        fresh = SourceRegistry()
        _load_builtin_and_plugins(fresh)
        assert fresh.kind("acme-flow").name == "acme_flow"
        assert fresh.detect(RUN) is fresh.format("acme_flow")
        assert [k.name for k in fresh.sub_kinds("workflow")][-1] == "acme_flow"
    finally:
        sys.modules.pop("spendstream.sources.acme_flow", None)
