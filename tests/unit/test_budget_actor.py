"""Who changed a budget, as the API, the producer and the CLI record it: the API token's
name (a client never picks its actor), the CLI's --actor (default the OS user), notes, and
a deletion's actor and note as headers of its tombstone. ``budgets history`` output."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from spendstream import budget_history as bh
from spendstream.cli import app
from spendstream.cli import budgets as budgets_cli
from spendstream.config import Settings, load_settings
from spendstream.schemas.budget import BudgetDefinition
from spendstream.streams.api import BudgetApi
from spendstream.streams.budget_feed import BudgetFeed
from spendstream.streams.pricing import Pricer

runner = CliRunner()
TOKENS = {"tok-ci-123": "ci", "tok-ana-456": "ana"}


@pytest.fixture
def api():
    feed = BudgetFeed(Settings())
    feed.registry.put(BudgetDefinition(budget_id="org", name="Acme", limit="100"))
    written: list[tuple] = []
    api = BudgetApi(feed, Pricer(), TOKENS, lambda *change: written.append(change), lambda a: None)
    api.written = written
    return api


def body(data) -> bytes:
    return json.dumps(data).encode()


# --- API -----------------------------------------------------------------------------------
def test_the_actor_is_the_tokens_name_whatever_the_body_says(api):
    status, reply = api.put_budget("org", body({"name": "Acme", "limit": "150", "actor": "mallory",
                                                "note": "Q4 plan"}), "Bearer tok-ana-456")  # fmt: skip
    assert status == 200 and reply["actor"] == "ana" and reply["note"] == "Q4 plan"
    budget, budget_id, actor, note = api.written[-1]
    assert (budget.actor, budget.note, budget_id, actor, note) == ("ana", "Q4 plan", "org", "ana",
                                                                   "Q4 plan")  # fmt: skip
    status, reply = api.put_budget(None, body({"budget_id": "ml", "name": "ML", "limit": "1"}),
                                   "Bearer tok-ci-123")  # fmt: skip
    assert status == 201 and reply["actor"] == "ci" and reply["note"] is None


def test_unknown_tokens_change_nothing(api):
    assert api.put_budget("org", body({"name": "x", "limit": "1"}), "Bearer tok-ana")[0] == 401
    assert api.delete_budget("org", "Bearer ci")[0] == 401
    assert api.written == []


def test_a_deletion_records_the_tokens_name_and_the_note_of_its_body(api):
    status, reply = api.delete_budget("org", "Bearer tok-ci-123", body({"note": " retired "}))
    assert status == 200 and reply["deleted"] == "org"
    assert api.written == [(None, "org", "ci", "retired")]


def test_a_deletion_without_a_body_has_no_note_and_bad_bodies_are_refused(api):
    assert api.delete_budget("org", "Bearer tok-ci-123", body({"actor": "mallory"}))[0] == 400
    assert api.delete_budget("org", "Bearer tok-ci-123", body({"note": 5}))[0] == 422
    assert api.delete_budget("org", "Bearer tok-ci-123", body({"note": "x" * 2001}))[0] == 422
    assert api.written == []
    assert api.delete_budget("org", "Bearer tok-ci-123")[0] == 200
    assert api.written == [(None, "org", "ci", None)]


def test_the_single_token_keeps_working_under_its_name():
    settings = load_settings(api_token="solo", api_tokens="ci=tok-ci-123")
    assert settings.api_token_names() == {"tok-ci-123": "ci", "solo": "api"}
    renamed = load_settings(api_token="solo", api_token_name="ops")
    assert renamed.api_token_names() == {"solo": "ops"}
    feed = BudgetFeed(Settings())
    written: list[tuple] = []
    api = BudgetApi(feed, Pricer(), "solo", lambda *c: written.append(c), lambda a: None)
    assert api.put_budget("b", body({"name": "B", "limit": "1"}), "Bearer solo")[0] == 201
    assert written[0][2] == "api"  # a plain string token: the default name
    assert load_settings(api_tokens="ci=tok").to_env()["SPENDSTREAM_API_TOKENS"] == "ci=tok"


@pytest.mark.parametrize(
    ("tokens", "single", "reason"),
    [("ci=a,ci=b", "", "given twice"), ("ci=a,ana=a", "", "same token"),
     ("bad name=a", "", "not a token name"), ("ci", "", "name=token"),
     ("ci=a", "a", "under another name")],
)  # fmt: skip
def test_token_settings_errors_never_show_a_token(tokens, single, reason):
    with pytest.raises(Exception, match=reason) as caught:
        load_settings(api_tokens=tokens, api_token=single)
    assert "'a'" not in str(caught.value) and "=a" not in str(caught.value)


# --- producer --------------------------------------------------------------------------------
def test_publish_budgets_stamps_definitions_and_heads_tombstones(monkeypatch):
    from spendstream import producer

    sent: list = []
    monkeypatch.setattr(producer, "publish_records",
                        lambda s, topic, records, what, headers=None: sent.append((records, headers)))  # fmt: skip
    own = BudgetDefinition(budget_id="a", name="A", limit="1", note="from the file")
    producer.publish_budgets(Settings(), [own], delete=["b"], actor="ana")
    records, headers = sent[0]
    stored = BudgetDefinition.decode(records[0][1])
    assert (stored.actor, stored.note) == ("ana", "from the file")  # no --note: the file's
    assert records[1] == ("b", None) and headers == [("actor", b"ana")]
    producer.publish_budgets(Settings(), [own], actor="bob", note="why")
    records, headers = sent[1]
    assert BudgetDefinition.decode(records[0][1]).note == "why"
    assert headers == [("actor", b"bob"), ("note", b"why")]


# --- CLI ---------------------------------------------------------------------------------------
@pytest.fixture
def broker_free(monkeypatch, tmp_path):
    """The CLI's budget writes without Kafka: what would be published is captured."""
    from spendstream import producer, topics

    calls: list = []
    live = {"org": BudgetDefinition(budget_id="org", name="Org", limit="10")}
    monkeypatch.setattr(producer, "publish_budgets",
                        lambda s, budgets, delete=(), **kw: calls.append((list(budgets),
                                                                          list(delete), kw)))  # fmt: skip
    monkeypatch.setattr(topics, "wait_for_broker", lambda *a, **k: None)
    monkeypatch.setattr(topics, "ensure_topics", lambda *a, **k: None)
    registry = SimpleNamespace(all=lambda: list(live.values()), get=live.get)
    monkeypatch.setattr(
        budgets_cli, "_read_budgets", lambda s, **k: SimpleNamespace(registry=registry)
    )
    monkeypatch.setattr(bh.getpass, "getuser", lambda: "os-user")
    monkeypatch.setenv("SPENDSTREAM_DATA_DIR", str(tmp_path))
    return calls


def test_apply_records_actor_and_note_with_the_os_user_as_default(broker_free, tmp_path):
    path = tmp_path / "b.yaml"
    path.write_text("- {budget_id: acme, name: Acme, limit: '100'}\n")
    result = runner.invoke(app, ["budgets", "apply", str(path), "--actor", "ana",
                                     "--note", "Q4 plan"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert broker_free[0][2] == {"actor": "ana", "note": "Q4 plan"}
    assert runner.invoke(app, ["budgets", "apply", str(path)]).exit_code == 0
    assert broker_free[1][2] == {"actor": "os-user", "note": None}
    bad = runner.invoke(app, ["budgets", "apply", str(path), "--actor", " "])
    assert bad.exit_code == 1 and "--actor" in bad.output and len(broker_free) == 2


def test_delete_records_actor_and_note(broker_free):
    result = runner.invoke(app, ["budgets", "delete", "org", "--yes", "--actor", "ops",
                                     "--note", "retired"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert broker_free == [([], ["org"], {"actor": "ops", "note": "retired"})]


T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)


def _version(offset: int, actor: str, note: str | None, limit: str | None) -> bh.BudgetVersion:
    definition = (
        bh.definition_of(BudgetDefinition(budget_id="acme", name="Acme", limit=limit))
        if limit
        else None
    )
    return bh.BudgetVersion("acme", T0 + timedelta(hours=offset), actor, note, definition, 0,
                            offset, ("topic",))  # fmt: skip


@pytest.fixture
def sources(monkeypatch, tmp_path):
    from spendstream import topics

    monkeypatch.setenv("SPENDSTREAM_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(topics, "wait_for_broker", lambda *a, **k: None)
    topic = [_version(1, "bob", "more room", "150"), _version(2, "ops", "retired", None)]
    stored = [replace(_version(0, "ana", "initial", "100"), sources=("clickhouse",)),
              replace(_version(1, "bob", None, "150"), sources=("clickhouse",))]  # fmt: skip
    monkeypatch.setattr(bh, "topic_versions",
                        lambda s, b: (topic if b == "acme" else [], []))  # fmt: skip
    monkeypatch.setattr(bh, "warehouse_versions",
                        lambda s, b: (stored if b == "acme" else [], None))  # fmt: skip


def test_history_shows_every_version_with_actor_note_and_diff(sources):
    result = runner.invoke(app, ["budgets", "history", "acme"], terminal_width=200)
    assert result.exit_code == 0, result.output
    out = result.output
    for expected in ("ana", "initial", "bob", "more room", "limit 100 -> 150", "ops",
                     "retired", "deleted", "compacted"):  # fmt: skip
        assert expected in out, expected
    assert out.index("initial") < out.index("more room") < out.index("retired")


def test_history_json_and_unknown_or_invalid_ids(sources):
    result = runner.invoke(app, ["budgets", "history", "acme", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert [(v["actor"], v["kind"]) for v in data["versions"]] == [
        ("ana", "first"), ("bob", "changed"), ("ops", "deleted")]  # fmt: skip
    assert data["versions"][1]["from"] == ["topic", "clickhouse"]
    assert any("compacted" in n for n in data["notes"])
    unknown = runner.invoke(app, ["budgets", "history", "nope"])
    assert unknown.exit_code == 1 and "no budget 'nope'" in unknown.output
    assert "Traceback" not in unknown.output
    invalid = runner.invoke(app, ["budgets", "history", "../x"])
    assert invalid.exit_code == 1 and "not a budget id" in invalid.output


def test_history_says_when_clickhouse_was_not_read(sources, monkeypatch):
    monkeypatch.setattr(bh, "warehouse_versions", lambda s, b: ([], "no ClickHouse data yet"))
    result = runner.invoke(app, ["budgets", "history", "acme", "--json"])
    data = json.loads(result.output)
    assert len(data["versions"]) == 2  # the topic's only
    assert any("ClickHouse not read (no ClickHouse data yet)" in n for n in data["notes"])


def test_show_says_who_made_the_current_version(monkeypatch, tmp_path):
    monkeypatch.setenv("SPENDSTREAM_DATA_DIR", str(tmp_path))
    current = BudgetDefinition(budget_id="acme", name="Acme", limit="150", updated_at=T0,
                               actor="bob", note="ml joins")  # fmt: skip
    registry = SimpleNamespace(all=lambda: [current], get={"acme": current}.get)
    feed = SimpleNamespace(registry=registry, statuses={}, resolved=set)
    monkeypatch.setattr(budgets_cli, "_read_budgets", lambda s, **k: feed)
    result = runner.invoke(app, ["budgets", "show", "acme"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "2026-11-20 09:00 UTC by bob: ml joins (`budgets history acme`)" in result.output
