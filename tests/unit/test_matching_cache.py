"""The per-signature match cache returns exactly what matching from the scopes returns."""

from __future__ import annotations

import random

import pytest

from spendstream.schemas.avro import codec
from spendstream.schemas.budget import BudgetDefinition
from spendstream.streams import matching
from spendstream.streams.matching import BudgetRegistry, Match, scope_matches
from spendstream.streams.price_stage import EventView
from tests.conftest import llm_event

#: Field -> values events carry (case variants, values no scope names, a literal "?").
VALUES = {
    "org": ["acme", "Acme", "other"],
    "team": ["ml", "ML", "web", "ops", "team-1"],
    "user": ["alice", "bob", "carol", "dave"],
    "provider": ["openai", "OpenAI", "OPENAI", "anthropic", "Anthropic"],
    "model": ["gpt-4o", "GPT-4o", "gpt-4o-mini", "claude-sonnet-4-5", "gpt-?", "gpt-x"],
    "source": ["llm", "LLM", "apify"],
    "platform": ["aws", "AWS", "gcp"],
    "env": ["prod", "Prod", "dev"],  # a free tag: compared case-sensitively
}
#: Field -> scope patterns: exact values in other cases, globs, and "?" (literal, no "*").
PATTERNS = {
    "org": ["acme", "ACME", "*"],
    "team": ["ml", "web", "team-*", "*l"],
    "user": ["alice", "bob", "Bob"],
    "provider": ["OpenAI", "anthropic", "open*"],
    "model": ["gpt-4o", "GPT-*", "*mini", "gpt-?", "claude*"],
    "source": ["LLM", "apify", "*"],
    "platform": ["AWS", "gcp"],
    "env": ["prod", "Prod", "p*"],
}


class Event:
    """A dict-backed Matchable (a missing key is a missing field)."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values = values

    def field(self, name: str) -> str | None:
        return self.values.get(name)


def random_budgets(rng: random.Random, count: int, prefix: str = "b") -> list[BudgetDefinition]:
    ids = [f"{prefix}{i}" for i in range(count)]
    budgets = []
    for budget_id in ids:
        fields = rng.sample(sorted(PATTERNS), rng.choice([0, 1, 1, 2, 2, 3]))
        scope = {f: rng.sample(PATTERNS[f], rng.randint(1, 2)) for f in fields}
        # parents: none, any budget (cycles included), or one that does not exist (yet)
        parent = rng.choice([None, None, rng.choice(ids), "ghost"])
        budgets.append(BudgetDefinition(
            budget_id=budget_id, name=budget_id, limit="1", scope=scope,
            parent_id=parent if parent != budget_id else None,
        ))  # fmt: skip
    return budgets


def random_event(rng: random.Random) -> Event:
    return Event({f: rng.choice(vals) for f, vals in VALUES.items() if rng.random() < 0.7})


def brute_ids(registry: BudgetRegistry, event: Event) -> list[str]:
    """Every scope tested, plus every ancestor: which budgets, ignoring ``via``."""
    found = set()
    for budget in registry.all():
        if scope_matches(budget.scope, event):
            found.add(budget.budget_id)
            found.update(a.budget_id for a in registry.ancestors(budget))
    return sorted(found)


def assert_same(registry: BudgetRegistry, events: list[Event]) -> None:
    by_key: dict[matching.Signature, list[Match]] = {}
    for event in events:
        expected = registry.match_uncached(event)
        assert registry.match(event) == expected  # computed and stored, or from the cache
        assert registry.match(event) == expected  # from the cache
        assert [m.budget.budget_id for m in expected] == brute_ids(registry, event)
        # the claim the cache rests on: events with equal signatures match equally
        assert by_key.setdefault(registry._snapshot.key(event), expected) == expected


def test_cached_match_equals_uncached_for_random_budgets_events_and_updates():
    for seed in range(80):
        rng = random.Random(seed)
        registry = BudgetRegistry(random_budgets(rng, rng.randint(1, 40)))
        events = [random_event(rng) for _ in range(50)]
        assert_same(registry, events)
        for step in range(5):  # every put/delete must drop what the old snapshot cached
            if rng.random() < 0.5 and len(registry):
                registry.delete(rng.choice(registry.all()).budget_id)
            else:
                for budget in random_budgets(rng, rng.randint(1, 3), prefix=f"n{step}-"):
                    registry.put(budget)
                # replace an existing id with a different scope and parent
                if len(registry) > 1:
                    old = rng.choice(registry.all())
                    new = random_budgets(rng, 1)[0]
                    registry.put(new.model_copy(update={"budget_id": old.budget_id,
                                                        "parent_id": None}))  # fmt: skip
            assert_same(registry, events)


def test_event_views_and_usage_events_hit_the_same_cached_result():
    budgets = [BudgetDefinition(budget_id="org", name="org", limit="100", scope={"org": "acme"})]
    budgets += [BudgetDefinition(budget_id=f"team-{t}", name="t", parent_id="org", limit="1",
                                 scope={"team": f"team-{t}"}) for t in range(50)]  # fmt: skip
    budgets.append(BudgetDefinition(budget_id="gpt", name="gpt", limit="1",
                                    scope={"model": "GPT-*", "provider": "OpenAI"}))  # fmt: skip
    registry = BudgetRegistry(budgets)
    for i in range(200):
        event = llm_event(f"e{i}", org=["acme", "other"][i % 2], team=f"team-{i % 60}",
                          model=["gpt-4o", "GPT-4o-mini", "claude-sonnet-4-5"][i % 3])  # fmt: skip
        view = EventView(codec("UsageEvent").decode(event.encode()))  # as the stage sees it
        expected = registry.match_uncached(event)
        assert registry.match(event) == expected
        assert registry.match(view) == expected == registry.match_uncached(view)


def test_signature_normalises_case_and_folds_values_no_scope_names():
    registry = BudgetRegistry([
        BudgetDefinition(budget_id="a", name="a", limit="1", scope={"provider": "OpenAI"}),
        BudgetDefinition(budget_id="u", name="u", limit="1", scope={"user": "alice"}),
        BudgetDefinition(budget_id="m", name="m", limit="1", scope={"model": "gpt-*"}),
    ])  # fmt: skip
    snapshot = registry._snapshot
    assert [name for name, _, _ in snapshot.signature] == ["model", "provider", "user"]
    key = snapshot.key
    assert key(Event({"provider": "OPENAI"})) == key(Event({"provider": "openai"}))
    assert key(Event({"user": "Alice"})) != key(Event({"user": "alice"}))  # case-sensitive
    # any user but alice matches nothing, like no user: one cache entry for all of them
    assert key(Event({"user": "bob"})) == key(Event({"user": "zed"})) == key(Event({}))
    assert key(Event({"model": "gpt-4o"})) != key(Event({"model": "gpt-4o-mini"}))  # a glob
    assert key(Event({"team": "ml"})) == key(Event({"team": "web"}))  # no scope names team
    for user in ("bob", "carol", "dave"):
        assert registry.match(Event({"user": user, "provider": "openai"}))
    assert len(snapshot.cache) == 1


def test_cache_is_per_snapshot_bounded_and_returns_fresh_lists(monkeypatch: pytest.MonkeyPatch):
    org = BudgetDefinition(budget_id="org", name="org", limit="1", scope={"org": "acme"})
    registry = BudgetRegistry([org])
    event = Event({"org": "acme"})
    first = registry.match(event)
    first.clear()  # the caller's list, not the cached result
    assert registry.match(event) == [Match(org, "org")]
    registry.put(org.model_copy(update={"scope": {"org": ["other"]}}))
    assert registry._snapshot.cache == {}
    assert registry.match(event) == []
    monkeypatch.setattr(matching, "CACHE_LIMIT", 3)
    for i in range(10):
        registry.match(Event({"org": "other", "team": str(i)}))
        registry.match(Event({"org": f"o{i}"}))
    assert len(registry._snapshot.cache) <= 3
    registry.delete("org")
    assert registry.match(Event({"org": "other"})) == []


def test_apply_builds_one_snapshot_for_many_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A feed reading 1,000 definitions indexes them once, not once per definition."""
    registry = BudgetRegistry([BudgetDefinition(budget_id="old", name="old", limit="1")])
    built = []
    real = matching.Snapshot.__init__

    def counting(self: matching.Snapshot, budgets: dict[str, BudgetDefinition]) -> None:
        built.append(len(budgets))
        real(self, budgets)

    monkeypatch.setattr(matching.Snapshot, "__init__", counting)
    team = [BudgetDefinition(budget_id=f"t{i}", name=f"t{i}", limit="5",
                             scope={"team": [f"team-{i}"]}) for i in range(1000)]  # fmt: skip
    changes: dict[str, BudgetDefinition | None] = {b.budget_id: b for b in team}
    changes["old"] = None
    registry.apply(changes)
    assert built == [1000]
    assert registry.get("old") is None and len(registry) == 1000
    assert [m.budget.budget_id for m in registry.match(Event({"team": "team-7"}))] == ["t7"]
    registry.apply({})  # nothing read: nothing rebuilt
    assert built == [1000]
    t8 = BudgetDefinition(budget_id="t8", name="t8", limit="9", scope={"team": ["team-8"]})
    registry.apply({"t7": None, "t8": t8})
    assert built == [1000, 999]
    assert registry.match(Event({"team": "team-7"})) == []
    assert registry.get("t8") is t8
