"""Routing rules of `spendstream notify`: which channels an alert goes to, and one clear
error for a bad rules file."""

from __future__ import annotations

from pathlib import Path

import pytest

from spendstream.sinks.notify.config import NotifyConfigError, load_config, parse_config

SECRET = "s3cret-s3cret-s3cret"
RULES = f"""
channels:
  hook: {{type: webhook, url: "https://hooks.example/a", secret: "{SECRET}"}}
  oncall:
    type: email
    host: smtp.example
    sender: spend@example.com
    to: [oncall@example.com]
  finance: {{type: slack, url: "https://hooks.slack.example/T/B/x", digest_minutes: 10}}
  team: {{type: slack, url: "https://hooks.slack.example/T/B/y"}}
rules:
  - name: critical pages on-call
    match: {{severity: critical}}
    channels: [oncall, hook]
  - name: blocks and downgrades
    match: {{action: [block, downgrade]}}
    channels: [hook]
  - name: team budgets from 80 %
    match: {{budget: ["team-*", "proj-?"], tier: ">=80"}}
    channels: [team]
  - name: exact tiers
    match: {{kind: threshold, tier: [50, 75]}}
    channels: [finance]
  - default: true
    channels: [finance]
"""


def alert(**kw: object) -> dict[str, object]:
    base: dict[str, object] = {
        "alert_id": "a", "budget_id": "org", "kind": "threshold", "severity": "warning",
        "action": "notify", "threshold_percent": "50.0000",
    }  # fmt: skip
    base.update(kw)
    return base


CASES = [
    # (what the alert has, channels it goes to)
    ({}, ["finance"]),  # tier 50 matches "exact tiers"
    ({"threshold_percent": "60"}, ["finance"]),  # nothing matched: the default
    ({"severity": "critical", "kind": "exceeded", "threshold_percent": None}, ["oncall", "hook"]),
    (
        {"severity": "critical", "action": "block", "threshold_percent": None},
        ["oncall", "hook"],
    ),  # no repeats
    ({"action": "downgrade", "threshold_percent": "75"}, ["hook", "finance"]),
    ({"budget_id": "team-ml", "threshold_percent": "80"}, ["team"]),
    ({"budget_id": "team-ml", "threshold_percent": "79.9999"}, ["finance"]),
    ({"budget_id": "proj-a", "threshold_percent": "100"}, ["team"]),
    ({"budget_id": "proj-ab", "threshold_percent": "100"}, ["finance"]),  # ? is one char
    ({"budget_id": "team-ml", "kind": "forecast", "threshold_percent": None}, ["finance"]),
    ({"kind": "anomaly", "threshold_percent": None}, ["finance"]),
]


@pytest.mark.parametrize(("fields", "expected"), CASES)
def test_rule_matching(fields: dict[str, object], expected: list[str]) -> None:
    assert parse_config(RULES).channels_for(alert(**fields)) == expected


def test_no_default_means_unmatched_alerts_go_nowhere() -> None:
    config = parse_config(RULES.replace("  - default: true\n    channels: [finance]\n", ""))
    assert config.channels_for(alert(threshold_percent="60")) == []


def test_env_references_fill_secrets() -> None:
    text = RULES.replace(f'"{SECRET}"', '"${HOOK_SECRET}"')
    config = parse_config(text, env={"HOOK_SECRET": "from-the-environment-1"})
    assert "from-the-environment-1" in config.secret_values()
    assert "from-the-environment-1" not in repr(config)  # secrets never print


BAD = [
    ("rules:\n  - channels: [x]\n    default: true\n", "channels: Field required"),
    (RULES.replace("channels: [team]", "channels: [teem]"), "rules.2.channels: unknown channel 'teem'"),
    (RULES.replace('"team-*"', '"team-["'), "'team-[' is not a budget id or glob"),
    (RULES.replace(f'secret: "{SECRET}"', "secret: short"), "channels.hook.secret: missing or too short"),
    (RULES.replace(f', secret: "{SECRET}"', ""), "channels.hook.secret: Field required"),
    (RULES.replace(f'"{SECRET}"', '"${NOT_SET_ANYWHERE}"'), "environment variable NOT_SET_ANYWHERE is not set"),
    (RULES.replace("severity: critical", "severity: loud"), "rules.0.match.severity.0: Input should be"),
    (RULES.replace('tier: ">=80"', 'tier: "about 80"'), "give percents"),
    (RULES.replace("type: email", "type: pager"), "channels.oncall: Input tag 'pager'"),
    (RULES.replace("to: [oncall@example.com]", "to: [oncall]"), "'oncall' is not an email address"),
    (RULES + "  - default: true\n    channels: [hook]\n", "2 default rules"),
    (RULES.replace("  - default: true\n", "  - default: true\n    match: {kind: threshold}\n"), "a default rule takes no 'match'"),
    (RULES.replace("https://hooks.example/a", "ftp://hooks.example/a"), "channels.hook.url: must be an http:// or https:// URL"),
    (RULES.replace("host: smtp.example", "host: smtp.example\n    security: none"), "security 'none' sends in clear text"),
    (RULES.replace("host: smtp.example", "host: smtp.example\n    username: me"), "give both username and password"),
    (RULES.replace('secret: "' + SECRET + '"', 'secret: "' + SECRET + '", headers: {Idempotency-Key: x}'), "'Idempotency-Key' is set by spendstream itself"),
    ("channels: [\n", "not valid YAML at line 2"),
    ("- just a list\n", "expected a mapping"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "message"), BAD)
def test_bad_rules_give_one_clear_error(text: str, message: str) -> None:
    with pytest.raises(NotifyConfigError) as caught:
        parse_config(text, "rules.yaml", env={})
    assert message in str(caught.value)
    assert str(caught.value).startswith("rules.yaml")


def test_every_problem_is_reported_at_once() -> None:
    text = RULES.replace("channels: [team]", "channels: [teem]").replace(
        "severity: critical", "severity: loud"
    )
    with pytest.raises(NotifyConfigError) as caught:
        parse_config(text)
    assert "teem" in str(caught.value) and "loud" in str(caught.value)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(NotifyConfigError, match="cannot read rules file"):
        load_config(tmp_path / "missing.yaml")
