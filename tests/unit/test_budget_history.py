"""Budget history: versions from topic records and ClickHouse rows, the field-level diff,
merging both sources, rendering, and the sink's rows through migration 0011 in chDB."""

from __future__ import annotations

import io
import json
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from rich.console import Console

from spendstream import budget_history as bh
from spendstream.budget_history import (
    BudgetVersion,
    Change,
    default_actor,
    definition_of,
    describe,
    diff,
    history,
    history_json,
    history_table,
    merge_versions,
    version_from_record,
    version_from_row,
)
from spendstream.schemas.budget import BudgetDefinition, BudgetError, load_budgets_file
from spendstream.schemas.models import Threshold

T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)


def budget(**changes) -> BudgetDefinition:
    base = {"budget_id": "acme", "name": "Acme", "limit": "100", "scope": {"org": "acme"},
            "updated_at": T0}  # fmt: skip
    return BudgetDefinition.model_validate({**base, **changes})


def record(b: BudgetDefinition, offset: int, headers=None) -> BudgetVersion:
    return version_from_record(b.budget_id.encode(), b.encode(), headers, None, 0, offset)


def tombstone(
    offset: int, actor: str | None = "ops", note: str | None = "retired"
) -> BudgetVersion:
    headers = [(k, v.encode()) for k, v in (("actor", actor), ("note", note)) if v]
    stamp = int((T0 + timedelta(days=3)).timestamp() * 1000)
    return version_from_record(b"acme", None, headers, stamp, 0, offset)


# --- versions ------------------------------------------------------------------------------
def test_a_definition_record_carries_its_actor_note_and_exact_values():
    v = record(budget(limit="100.50", actor="ana", note="Q4 plan"), 7)
    assert (v.budget_id, v.actor, v.note, v.partition, v.offset) == ("acme", "ana", "Q4 plan", 0, 7)
    assert v.at == T0 and not v.deleted
    assert v.definition["limit"] == "100.5"  # exact text, not 100.500000000
    assert v.definition["thresholds"][0] == {"percent": "50", "action": "notify",
                                             "downgrade_to": None}  # fmt: skip
    assert "actor" not in v.definition and "updated_at" not in v.definition


def test_a_tombstone_keeps_its_actor_and_note_from_the_headers_and_its_time():
    v = tombstone(9)
    assert v.deleted and (v.actor, v.note) == ("ops", "retired")
    assert v.at == T0 + timedelta(days=3)


def test_a_value_written_before_v2_takes_its_actor_from_the_headers():
    v = record(budget(), 1, headers=[("actor", b"ci-bot")])
    assert v.actor == "ci-bot" and v.note is None
    assert record(budget(actor="ana"), 1, headers=[("actor", b"x")]).actor == "ana"  # value wins


# --- diff and rendering ----------------------------------------------------------------------
def test_diff_names_each_changed_field_with_old_and_new():
    old = definition_of(budget())
    new = definition_of(budget(limit="150", scope={"org": "acme", "team": ["ml", "research"]},
                               thresholds=[{"percent": 80}, {"percent": 100, "action": "block"}]))  # fmt: skip
    changes = diff(old, new)
    assert [c.field for c in changes] == ["limit", "scope.team", "thresholds"]
    assert changes[0] == Change("limit", "100", "150")
    assert changes[1] == Change("scope.team", None, ["ml", "research"])
    lines = [describe(c) for c in changes]
    assert lines[0] == "limit 100 -> 150"
    assert lines[1] == "scope.team (none) -> ml, research"
    assert lines[2] == ("thresholds 50% notify, 75% notify, 90% notify, 100% notify -> "
                        "80% notify, 100% block")  # fmt: skip


def test_diff_of_allocations_parent_and_downgrade_tiers():
    old = definition_of(budget(allocations={"ml": "40"}))
    new = definition_of(budget(allocations={"ml": "60", "ops": "10"}, parent_id="root",
                               thresholds=[Threshold(percent=90, action="downgrade",
                                                     downgrade_to="gpt-4o-mini")]))  # fmt: skip
    text = [describe(c) for c in diff(old, new)]
    assert text == ["parent_id (none) -> root", "thresholds 50% notify, 75% notify, 90% notify, "
                    "100% notify -> 90% downgrade -> gpt-4o-mini", "allocations.ml 40 -> 60",
                    "allocations.ops (none) -> 10"]  # fmt: skip


def test_diff_leaves_out_fields_an_old_stored_version_does_not_know():
    legacy = {k: v for k, v in definition_of(budget()).items() if k not in ("allocations", "owner")}
    assert diff(legacy, definition_of(budget(allocations={"ml": "5"}, owner="ana"))) == []
    assert diff(definition_of(budget()), definition_of(budget())) == []


def test_history_kinds_first_changed_unchanged_deleted_recreated():
    versions = [
        record(budget(actor="ana", note="initial"), 0),
        record(budget(limit="150", actor="bob", note="more room"), 1),
        record(budget(limit="150", actor="bob"), 2),
        tombstone(3),
        record(budget(limit="90", actor="ana"), 4),
    ]
    entries = history(versions)
    assert [e.kind for e in entries] == ["first", "changed", "unchanged", "deleted", "recreated"]
    assert entries[0].lines()[0] == "Acme: limit 100 USD monthly"
    assert entries[1].lines() == ["limit 100 -> 150"]
    assert entries[2].lines() == ["applied again, no field changed"]
    assert entries[3].lines() == ["deleted"]
    assert entries[4].lines() == ["recreated after its deletion", "limit 150 -> 90"]


def test_history_table_and_json_show_time_actor_note_and_changes():
    entries = history([record(budget(actor="ana", note="initial"), 0),
                       record(budget(limit="150", actor="bob", note="more room"), 1),
                       tombstone(2)])  # fmt: skip
    out = io.StringIO()
    Console(file=out, width=160).print(history_table("acme", entries))
    text = out.getvalue()
    for expected in ("history of acme", "2026-11-20 09:00:00", "ana", "bob", "ops",
                     "limit 100 -> 150", "more room", "retired", "deleted"):  # fmt: skip
        assert expected in text, expected
    data = json.loads(json.dumps(history_json("acme", entries, ["n"])))
    assert [v["kind"] for v in data["versions"]] == ["first", "changed", "deleted"]
    assert data["versions"][1]["changes"] == [{"field": "limit", "old": "100", "new": "150"}]
    assert data["versions"][2]["definition"] is None and data["versions"][2]["actor"] == "ops"
    assert data["versions"][0]["at"] == "2026-11-20T09:00:00+00:00" and data["notes"] == ["n"]


# --- merging sources -------------------------------------------------------------------------
def test_merge_counts_a_position_once_and_orders_by_offset():
    topic = [record(budget(limit="150", actor="bob"), 5), tombstone(8)]
    stored = [
        BudgetVersion("acme", T0, "ana", None, definition_of(budget()), 0, 2, ("clickhouse",)),
        BudgetVersion("acme", T0, None, "from the sink", definition_of(budget(limit="150")), 0, 5,
                      ("clickhouse",)),
    ]  # fmt: skip
    merged = merge_versions(topic, stored)
    assert [v.offset for v in merged] == [2, 5, 8]
    assert merged[1].sources == ("topic", "clickhouse")
    assert (merged[1].actor, merged[1].note) == ("bob", "from the sink")  # filled in


def test_default_actor_is_the_os_user_with_a_fallback(monkeypatch):
    monkeypatch.setattr(bh.getpass, "getuser", lambda: "ana")
    assert default_actor() == "ana"

    def nobody() -> str:
        raise KeyError("getpwuid(): uid not found: 12345")

    monkeypatch.setattr(bh.getpass, "getuser", nobody)
    assert default_actor().startswith("uid-") or default_actor() == "unknown"


def test_a_budget_file_cannot_name_its_actor(tmp_path):
    path = tmp_path / "b.yaml"
    path.write_text("- {budget_id: a, name: A, limit: '1', actor: mallory}\n")
    with pytest.raises(BudgetError, match="--actor"):
        load_budgets_file(path)


# --- the sink's rows through migration 0011 (chDB) ------------------------------------------
def test_budget_history_table_keeps_every_version_and_the_rows_diff_like_the_topic(chdb_dir):
    from spendstream.config import load_settings
    from spendstream.sinks.rows import BUDGET_COLUMNS, budget_row
    from spendstream.sinks.warehouse import connect, migrate

    settings = load_settings(clickhouse_dsn=f"chdb://{chdb_dir}",
                             clickhouse_database=f"hist_{uuid.uuid4().hex[:6]}")  # fmt: skip
    client = connect(settings)
    migrate(client)
    first = budget(actor="ana", note="initial", allocations={"ml": "40"})
    second = budget(limit="150", actor="bob", note="more room", allocations={"ml": "40"})
    gone_at = int((T0 + timedelta(days=1)).timestamp() * 1000)
    rows = [
        budget_row(first.encode(), ("budgets", 0, 0), b"acme"),
        budget_row(second.encode(), ("budgets", 0, 1), b"acme"),
        budget_row(None, ("budgets", 0, 2), b"acme", [("actor", b"ops"), ("note", b"bye")],
                   gone_at),
    ]  # fmt: skip
    for row in rows:  # one insert per record, as the sink may
        client.insert("budgets", [row], column_names=BUDGET_COLUMNS)
    client.insert("budgets", [rows[1]], column_names=BUDGET_COLUMNS)  # a replayed record
    kept = client.query("SELECT count() FROM budget_history FINAL").result_rows[0][0]
    assert kept == 3
    client.command("OPTIMIZE TABLE budgets FINAL")  # what a merge does to `budgets`
    assert client.query("SELECT count() FROM budgets").result_rows[0][0] == 1
    result = client.query(bh.HISTORY_SQL, parameters={"b": "acme"})
    stored = [version_from_row(dict(zip(result.column_names, r, strict=True)))
              for r in result.result_rows]  # fmt: skip
    client.close()
    assert [(v.actor, v.note, v.deleted) for v in stored] == [
        ("ana", "initial", False), ("bob", "more room", False), ("ops", "bye", True)]  # fmt: skip
    assert stored[2].at == T0 + timedelta(days=1)
    # the same definitions as read from the topic: no false changes between the sources
    assert stored[0].definition == definition_of(first)
    assert [e.lines() for e in history(stored)][1] == ["limit 100 -> 150"]


def test_a_row_stored_before_migration_0011_still_diffs_on_its_columns():
    row = {"budget_id": "acme", "deleted": 0, "updated_at": T0.replace(tzinfo=None),
           "actor": "", "note": "", "definition": "", "name": "Acme", "parent_id": "",
           "limit": Decimal("100.000000000"), "currency": "USD", "period": "monthly",
           "timezone": "UTC", "scope": '{"org": ["acme"]}',
           "thresholds": '[{"percent": "50.0000", "action": "notify", "downgrade_to": null}]',
           "custom_start": None, "custom_end": None, "_partition": 0, "_offset": 3}  # fmt: skip
    old = version_from_row(row)
    assert old.actor is None and old.at == T0 and old.offset == 3
    assert old.definition["limit"] == "100" and old.definition["thresholds"][0]["percent"] == "50"
    new = record(budget(limit="120", thresholds=[{"percent": 50}], owner="ana"), 4)
    assert [describe(c) for c in diff(old.definition, new.definition)] == ["limit 100 -> 120"]
