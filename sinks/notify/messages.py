"""The words of an alert: one-line summaries, Slack blocks and email parts, without I/O.

Alerts arrive as JSON-ready dicts (a decoded BudgetAlert with money as exact decimal
strings). Money is handled with ``decimal``/``fractions`` only: a rounded float in an alert
about money would be a wrong number in front of the person deciding what to do.
Rendering never raises on an odd value (a missing field, a non-number): an alert that
cannot be worded perfectly is still better delivered than lost.
"""

from __future__ import annotations

import html
import string
from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any
from urllib.parse import quote, urlsplit

#: a digest shows this many alerts in Slack (a message holds at most 50 blocks)
SLACK_DIGEST_CAP = 40
#: Slack rejects a section text longer than this
_SLACK_TEXT_MAX = 3000
_SEVERITY_EMOJI = {
    "critical": ":rotating_light:",
    "warning": ":warning:",
    "info": ":information_source:",
}
_URL_FORBIDDEN = frozenset("<>|\"'` ") | frozenset(chr(c) for c in range(32)) | {"\x7f"}

Alert = Mapping[str, Any]


def _decimal(value: Any) -> Decimal | None:
    """``value`` as an exact Decimal (floats through their shortest repr), or None."""
    if value is None or isinstance(value, bool):
        return None
    try:
        d = value if isinstance(value, Decimal) else Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        return None
    return d if d.is_finite() else None


def _fixed(d: Decimal, min_places: int) -> str:
    """``d`` in plain notation with trailing zeros dropped down to ``min_places`` decimals.

    Built from the digit tuple so no context precision can round a 38-digit amount."""
    sign, digits, exp = d.as_tuple()
    assert isinstance(exp, int)  # finite
    coeff = list(digits)
    while exp < -min_places and len(coeff) > 1 and coeff[-1] == 0:
        coeff.pop()
        exp += 1
    if exp > -min_places:
        coeff.extend([0] * (exp + min_places))
        exp = -min_places
    return format(Decimal((sign, tuple(coeff), exp)), "f")


def money(value: Any) -> str:
    """An amount with at least two decimals and every significant digit kept
    ("812.5" -> "812.50", "0.000123" stays, "812.500000000" -> "812.50")."""
    d = _decimal(value)
    return "-" if d is None else _fixed(d, 2)


def _plain(value: Any) -> str | None:
    """A percent such as threshold_percent without padding zeros ("80.0000" -> "80")."""
    d = _decimal(value)
    return None if d is None else _fixed(d, 0)


def percent(alert: Alert) -> str:
    """spent / limit * 100 to one decimal, half-even ("81.3"); "-" without a usable limit.

    Computed on fractions, so the single rounding step is exact whatever the scale."""
    spent, limit = _decimal(alert.get("spent")), _decimal(alert.get("limit"))
    if spent is None or limit is None or limit == 0:
        return "-"
    tenths = round(Fraction(spent) * 1000 / Fraction(limit))  # round() on Fraction: half-even
    return format(Decimal(tenths).scaleb(-1), "f")


def _text(alert: Alert, key: str, default: str = "") -> str:
    value = alert.get(key)
    return default if value is None else str(value)


def tier(alert: Alert) -> str:
    """What was crossed: "80% tier" for a threshold, else the kind ("exceeded", ...)."""
    kind = _text(alert, "kind", "alert")
    pct = _plain(alert.get("threshold_percent"))
    if pct is None:
        return kind
    return f"{pct}% tier" if kind == "threshold" else f"{kind} ({pct}% tier)"


def _action(alert: Alert) -> str:
    action = _text(alert, "action", "notify")
    target = alert.get("downgrade_to")
    return f"{action} to {target}" if target else action


def summary(alert: Alert) -> str:
    """One line for logs, chat fallbacks and plain text, e.g. "Team A (team-a) 80% tier:
    spent 812.50 of 1000.00 USD (81.3 %), projected 1240.00 USD, action notify"."""
    cur = _text(alert, "currency")
    unit = f" {cur}" if cur else ""
    line = (
        f"{_text(alert, 'budget_name', '?')} ({_text(alert, 'budget_id', '?')}) {tier(alert)}: "
        f"spent {money(alert.get('spent'))} of {money(alert.get('limit'))}{unit}"
    )
    pct = percent(alert)
    if pct != "-":
        line += f" ({pct} %)"
    if alert.get("projected_total") is not None:
        line += f", projected {money(alert['projected_total'])}{unit}"
    return f"{line}, action {_action(alert)}"


def headline(alert: Alert) -> str:
    """What happened, in words, for an email subject or a heading."""
    name, kind = _text(alert, "budget_name", "?"), _text(alert, "kind", "alert")
    if kind == "exceeded":
        return f"{name} exceeded its budget"
    if kind == "threshold":
        reached = _plain(alert.get("threshold_percent")) or percent(alert)
        return f"{name} reached {reached}% of its budget"
    if kind == "forecast":
        return f"{name} is projected to exceed its budget"
    if kind == "anomaly":
        return f"{name}: unusual spend"
    return f"{name}: {kind} alert"


def link(alert: Alert, template: str | None) -> str | None:
    """``template`` filled with the alert's URL-quoted budget_id, alert_id and period_key,
    or None when there is no template or it cannot make an http(s) URL (a typo in the
    rules file must cost the link, never the alert)."""
    if not template:
        return None
    values = {k: quote(_text(alert, k), safe="") for k in ("budget_id", "alert_id", "period_key")}
    try:
        # only plain {name} fields: attribute/index lookups and format specs are refused
        for _, field, spec, conv in string.Formatter().parse(template):
            if field is not None and (field not in values or spec or conv):
                return None
        url = template.format(**values)
    except (ValueError, KeyError, IndexError, AttributeError, TypeError):
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or len(url) > 2000:
        return None
    return None if any(c in _URL_FORBIDDEN for c in url) else url


def _mrkdwn(value: Any) -> str:
    """Text safe inside Slack mrkdwn: &, < and > escaped so a name cannot make a link or an
    @channel mention."""
    return str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _slack_section(alert: Alert, link_template: str | None) -> dict[str, Any]:
    cur = _mrkdwn(_text(alert, "currency"))
    severity = _text(alert, "severity", "warning")
    emoji = _SEVERITY_EMOJI.get(severity, ":bell:")
    pct = percent(alert)
    lines = [
        f"{emoji} *{_mrkdwn(_text(alert, 'budget_name', '?'))}* "
        f"(`{_mrkdwn(_text(alert, 'budget_id', '?'))}`)",
        f"*{_mrkdwn(tier(alert))}* · severity *{_mrkdwn(severity)}*",
        f"Spent *{money(alert.get('spent'))}* / {money(alert.get('limit'))} {cur}"
        + (f" ({pct} %)" if pct != "-" else ""),
    ]
    if alert.get("projected_total") is not None:
        lines.append(f"Projected {money(alert['projected_total'])} {cur}")
    lines.append(f"Action: *{_mrkdwn(_action(alert))}*")
    url = link(alert, link_template)
    if url:
        lines.append(f"<{url}|Open budget>")
    message = _text(alert, "message")
    if message:
        room = _SLACK_TEXT_MAX - len("\n".join(lines)) - 1
        quoted = _mrkdwn(message)
        lines.append(quoted if len(quoted) <= room else quoted[: max(room - 1, 0)] + "…")
    text = "\n".join(lines)[:_SLACK_TEXT_MAX]
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def slack_payload(alerts: Sequence[Alert], link_template: str | None) -> dict[str, Any]:
    """The incoming-webhook JSON: ``text`` is the notification fallback, ``blocks`` one
    section per alert (a digest shows the first SLACK_DIGEST_CAP and counts the rest)."""
    if len(alerts) == 1:
        return {
            "text": _mrkdwn(summary(alerts[0])),
            "blocks": [_slack_section(alerts[0], link_template)],
        }
    title = f"{len(alerts)} budget alerts"
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*{title}*"}}
    ]
    blocks.extend(_slack_section(a, link_template) for a in alerts[:SLACK_DIGEST_CAP])
    if len(alerts) > SLACK_DIGEST_CAP:
        more = f"and {len(alerts) - SLACK_DIGEST_CAP} more"
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": more}]})
    return {"text": title, "blocks": blocks}


def _rows(alert: Alert) -> list[tuple[str, str]]:
    """The labelled facts of one alert, shared by the plain and the HTML email."""
    cur = _text(alert, "currency")
    rows = [
        ("Budget", f"{_text(alert, 'budget_name', '?')} ({_text(alert, 'budget_id', '?')})"),
        ("Tier", tier(alert)),
        ("Severity", _text(alert, "severity", "warning")),
        ("Spent", f"{money(alert.get('spent'))} {cur}".strip()),
        ("Limit", f"{money(alert.get('limit'))} {cur}".strip()),
        ("Percent", f"{percent(alert)} %"),
    ]
    if alert.get("projected_total") is not None:
        rows.append(("Projected", f"{money(alert['projected_total'])} {cur}".strip()))
    rows += [
        ("Action", _action(alert)),
        ("Period", _text(alert, "period_key")),
        ("Triggered at", _text(alert, "triggered_at")),
        ("Message", _text(alert, "message")),
        ("Alert id", _text(alert, "alert_id")),
    ]
    return [(label, value) for label, value in rows if value]


def _one_line(text: str, limit: int = 200) -> str:
    """A header-safe line: no CR/LF (header injection), bounded length."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def email_parts(alerts: Sequence[Alert]) -> tuple[str, str, str]:
    """(subject, plain text, HTML) of an email for one alert or a digest; every value in
    the HTML is escaped, since budget names and messages come from users."""
    if len(alerts) == 1:
        only = alerts[0]
        subject = f"[spendstream] {_text(only, 'severity', 'warning')}: {headline(only)}"
    else:
        subject = f"[spendstream] {len(alerts)} budget alerts"
    subject = _one_line(subject)
    text_parts, html_parts = [], []
    for alert in alerts:
        rows = _rows(alert)
        width = max(len(label) for label, _ in rows)
        text_parts.append(
            summary(alert) + "\n\n" + "\n".join(f"  {lbl:<{width}}  {v}" for lbl, v in rows)
        )
        cells = "".join(
            f'<tr><th align="left">{html.escape(lbl)}</th><td>{html.escape(v)}</td></tr>'
            for lbl, v in rows
        )
        html_parts.append(
            f"<h3>{html.escape(headline(alert))}</h3>\n"
            f'<table cellpadding="4" cellspacing="0">{cells}</table>'
        )
    text = "\n\n".join(text_parts) + "\n\n-- \nspendstream notify\n"
    body = "\n<hr>\n".join(html_parts)
    document = (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>{html.escape(subject)}</title></head>\n<body>\n{body}\n"
        "<p><small>spendstream notify</small></p>\n</body></html>\n"
    )
    return subject, text, document
