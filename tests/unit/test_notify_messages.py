"""Alert wording: exact money, half-even percents, Slack digests, links, escaped HTML."""

from __future__ import annotations

import json
from typing import Any

import pytest

from spendstream.sinks.notify.messages import (
    SLACK_DIGEST_CAP,
    email_parts,
    link,
    money,
    percent,
    slack_payload,
    summary,
)


def alert(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "alert_id": "al-1",
        "budget_id": "team-a",
        "budget_name": "Team A",
        "period_key": "2026-11",
        "kind": "threshold",
        "threshold_percent": "80",
        "action": "notify",
        "downgrade_to": None,
        "severity": "warning",
        "spent": "812.6",
        "limit": "1000",
        "currency": "USD",
        "message": "Team A passed 80% of its monthly budget",
        "triggered_by": "e-9",
        "triggered_at": "2026-11-15T12:00:00+00:00",
        "projected_total": "1240",
    }
    base.update(over)
    return base


@pytest.mark.parametrize(
    ("spent", "limit", "expected"),
    [
        ("812.6", "1000", "81.3"),
        ("812.5", "1000", "81.2"),  # 81.25: half-even goes to the even digit
        ("813.5", "1000", "81.4"),  # 81.35 -> 81.4
        ("1", "3", "33.3"),
        ("2", "3", "66.7"),
        ("0", "1000", "0.0"),
        ("1500", "1000", "150.0"),
        # 38 significant digits: no float, no context precision rounds it before the end
        ("12345678901234567890123456789.000000005", "100000000000000000000000000000", "12.3"),
        ("0.000000001", "0.000000002", "50.0"),
    ],
)
def test_percent_is_exact_and_half_even(spent: str, limit: str, expected: str) -> None:
    assert percent(alert(spent=spent, limit=limit)) == expected


def test_percent_without_a_usable_limit() -> None:
    assert percent(alert(limit="0")) == "-"
    assert percent(alert(limit="0.000000000")) == "-"
    assert percent(alert(limit=None)) == "-"
    assert "(" not in summary(alert(limit="0")).split("USD")[1].split(",")[0]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("812.5", "812.50"),
        ("1000", "1000.00"),
        ("0.000123", "0.000123"),
        ("812.500000000", "812.50"),  # Avro scale 9 padding is not a digit of the amount
        ("0.100000001", "0.100000001"),
        ("1E+3", "1000.00"),
        ("-3.5", "-3.50"),
        ("12345678901234567890123456789.123456789", "12345678901234567890123456789.123456789"),
        ("0", "0.00"),
        ("not a number", "-"),
    ],
)
def test_money_keeps_every_digit(value: str, expected: str) -> None:
    assert money(value) == expected


def test_summary_line() -> None:
    assert summary(alert()) == (
        "Team A (team-a) 80% tier: spent 812.60 of 1000.00 USD (81.3 %), "
        "projected 1240.00 USD, action notify"
    )
    tiny = summary(alert(spent="0.000123", limit="0.01", projected_total=None))
    assert "spent 0.000123 of 0.01 USD (1.2 %)" in tiny
    assert "projected" not in tiny
    no_field = alert()
    del no_field["projected_total"]  # records written before the field existed
    assert "projected" not in summary(no_field)
    downgrade = summary(
        alert(
            kind="exceeded",
            threshold_percent="100.0000",
            action="downgrade",
            downgrade_to="gpt-4o-mini",
        )
    )
    assert "exceeded (100% tier)" in downgrade
    assert downgrade.endswith("action downgrade to gpt-4o-mini")


def test_slack_single_alert_blocks() -> None:
    payload = slack_payload([alert(severity="critical")], None)
    assert payload["text"] == summary(alert())
    (block,) = payload["blocks"]
    assert block["type"] == "section" and block["text"]["type"] == "mrkdwn"
    text = block["text"]["text"]
    for part in (
        "Team A",
        "team-a",
        "80% tier",
        "812.60",
        "1000.00",
        "81.3 %",
        "1240.00",
        "notify",
        "critical",
    ):
        assert part in text
    assert "<http" not in text  # no template, no link
    json.dumps(payload)  # JSON-ready


def test_slack_escapes_mrkdwn_control_characters() -> None:
    payload = slack_payload([alert(budget_name="<!channel> R&D")], None)
    text = payload["blocks"][0]["text"]["text"]
    assert "&lt;!channel&gt; R&amp;D" in text
    assert "<!channel>" not in text and "<!channel>" not in payload["text"]


def test_slack_digest_is_capped() -> None:
    alerts = [alert(alert_id=f"al-{i}", budget_id=f"b-{i}") for i in range(55)]
    payload = slack_payload(alerts, None)
    assert payload["text"] == "55 budget alerts"
    blocks = payload["blocks"]
    assert len(blocks) <= 50  # Slack's limit per message
    sections = [b for b in blocks if b["type"] == "section"]
    assert len(sections) == 1 + SLACK_DIGEST_CAP  # title + one per shown alert
    assert "`b-39`" in sections[-1]["text"]["text"]
    assert not any("`b-40`" in json.dumps(b) for b in blocks)
    assert blocks[-1]["elements"][0]["text"] == f"and {55 - SLACK_DIGEST_CAP} more"

    small = slack_payload(alerts[:3], None)
    assert small["text"] == "3 budget alerts"
    assert len(small["blocks"]) == 4
    assert "more" not in json.dumps(small["blocks"][-1])


def test_link_template_quotes_values() -> None:
    tricky = alert(budget_id="team a/b?&x", alert_id="al#1", period_key="2026-11")
    template = (
        "https://grafana.example/d/spend?var-budget={budget_id}&alert={alert_id}&p={period_key}"
    )
    url = link(tricky, template)
    assert url == (
        "https://grafana.example/d/spend?var-budget=team%20a%2Fb%3F%26x&alert=al%231&p=2026-11"
    )
    text = slack_payload([tricky], template)["blocks"][0]["text"]["text"]
    assert f"<{url}|Open budget>" in text


@pytest.mark.parametrize(
    "template",
    [
        "https://g.example/{budget}",  # unknown key
        "https://g.example/{0}",  # positional
        "https://g.example/{budget_id",  # unbalanced
        "https://g.example/{budget_id.__class__}",  # attribute lookup
        "https://g.example/{budget_id!r}",
        "javascript:alert({budget_id})",  # not http(s)
        "https://g.example/a|b/{budget_id}",  # would break the Slack link syntax
        "",
    ],
)
def test_bad_link_template_leaves_the_link_out(template: str) -> None:
    assert link(alert(), template) is None
    payload = slack_payload([alert()], template)  # and the message is still made
    assert "Open budget" not in payload["blocks"][0]["text"]["text"]
    assert "812.60" in payload["blocks"][0]["text"]["text"]


def test_email_single_alert() -> None:
    subject, text, html = email_parts([alert(kind="exceeded", severity="critical")])
    assert subject == "[spendstream] critical: Team A exceeded its budget"
    assert summary(alert(kind="exceeded")) in text
    assert "al-1" in text and "2026-11-15T12:00:00+00:00" in text
    assert html.startswith("<!DOCTYPE html>") and "812.60 USD" in html

    subject, _, _ = email_parts([alert()])
    assert subject == "[spendstream] warning: Team A reached 80% of its budget"


def test_email_digest_subject_and_content() -> None:
    alerts = [alert(alert_id=f"al-{i}", budget_name=f"Team {i}") for i in range(5)]
    subject, text, html = email_parts(alerts)
    assert subject == "[spendstream] 5 budget alerts"
    for i in range(5):
        assert f"Team {i} (team-a)" in text
        assert f"al-{i}" in html


def test_email_html_escapes_every_value() -> None:
    evil = alert(
        budget_name="<script>alert(1)</script>",
        message='"quoted" & <b>bold</b>',
        budget_id="x'y",
    )
    subject, text, html = email_parts([evil])
    assert "<script>" not in html and "<b>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&quot;quoted&quot; &amp; &lt;b&gt;bold&lt;/b&gt;" in html
    assert "x&#x27;y" in html
    assert "<script>alert(1)</script>" in text  # plain text stays literal
    assert "\n" not in subject


def test_email_subject_has_no_line_breaks() -> None:
    subject, _, _ = email_parts([alert(budget_name="Team\r\nBcc: victim@example.com")])
    assert "\r" not in subject and "\n" not in subject
