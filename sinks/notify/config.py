"""The notify rules file: channels and routing rules, checked in full at start.

A file looks like::

    channels:
      ops-hook:
        type: webhook
        url: https://hooks.example.com/spend
        secret: ${OPS_HOOK_SECRET}        # ${VAR} reads the environment
      finance:
        type: slack
        url: ${FINANCE_SLACK_URL}
        digest_minutes: 10
    rules:
      - name: blocks page on-call
        match: {action: [block, downgrade], severity: critical}
        channels: [ops-hook]
      - name: everything else
        default: true
        channels: [finance]

Every rule whose ``match`` holds contributes its channels; the default rule applies when
no other rule matched. Every problem in the file is reported at once, one per line.
"""

from __future__ import annotations

import fnmatch
import os
import re
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from spendstream.errors import UserError

#: a budget id (schemas/budget.py) or a glob over budget ids
_GLOB_CHARS = re.compile(r"^[A-Za-z0-9._*?!\[\]-]{1,128}$")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class NotifyConfigError(UserError, ValueError):
    """The rules file cannot be used; the message names every problem and where."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RetryPolicy(_Strict):
    """Exponential backoff with jitter: attempt n waits about initial_s * 2^(n-1), at most
    max_s; a Retry-After from the receiver is waited at least (up to max_retry_after_s)."""

    attempts: int = Field(default=6, ge=1, le=100)
    initial_s: float = Field(default=1.0, gt=0, le=3600)
    max_s: float = Field(default=300.0, gt=0, le=86_400)
    max_retry_after_s: float = Field(default=3600.0, ge=0, le=86_400)


class _ChannelBase(_Strict):
    #: deliveries per minute at most (token bucket, bursts up to ``burst``); None = no limit
    rate_per_minute: float | None = Field(default=None, gt=0)
    burst: int = Field(default=10, ge=1)
    #: collect alerts this long and send one message; None = each alert at once
    digest_minutes: float | None = Field(default=None, gt=0, le=1440)
    timeout_s: float = Field(default=10.0, gt=0, le=300)
    retry: RetryPolicy = RetryPolicy()

    def secret_values(self) -> list[str]:
        """Every secret this channel holds, to keep out of logs and records."""
        return [
            v.get_secret_value()
            for v in self.__dict__.values()
            if isinstance(v, SecretStr) and v.get_secret_value()
        ]


def _http_url(v: SecretStr) -> SecretStr:
    """Only http(s) URLs are sent to (checked here so a typo fails at start, not at the
    first alert); the URL itself is not echoed, it may hold a token."""
    parts = urlsplit(v.get_secret_value())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    return v


#: headers the sender sets itself; a rules file may not replace them
_OWN_HEADERS = {"content-type", "user-agent", "idempotency-key", "content-length", "host"}


class WebhookConfig(_ChannelBase):
    type: Literal["webhook"]
    url: SecretStr
    #: HMAC-SHA256 key of the X-Spendstream-Signature header (required: receivers verify)
    secret: SecretStr
    headers: dict[str, str] = Field(default_factory=dict)

    _url = field_validator("url")(classmethod(lambda cls, v: _http_url(v)))

    @field_validator("headers")
    @classmethod
    def _headers(cls, v: dict[str, str]) -> dict[str, str]:
        for name, value in v.items():
            low = name.lower()
            if low in _OWN_HEADERS or low.startswith("x-spendstream-"):
                raise ValueError(f"'{name}' is set by spendstream itself")
            if (
                not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", name)
                or "\n" in value
                or "\r" in value
            ):
                raise ValueError(f"'{name}' is not a valid header (name or line break in value)")
        return v

    @field_validator("secret")
    @classmethod
    def _non_empty(cls, v: SecretStr) -> SecretStr:
        if len(v.get_secret_value()) < 16:
            raise ValueError("missing or too short (at least 16 characters)")
        return v


class SlackConfig(_ChannelBase):
    type: Literal["slack"]
    #: the incoming-webhook URL (it is the credential, so it is kept secret)
    url: SecretStr
    #: a link added to each message, e.g. "https://grafana/d/spend?var-budget={budget_id}"
    link: str | None = None

    _url = field_validator("url")(classmethod(lambda cls, v: _http_url(v)))


class EmailConfig(_ChannelBase):
    type: Literal["email"]
    host: str
    port: int = Field(default=587, ge=1, le=65535)
    #: "starttls" upgrades a plain connection (port 587), "ssl" is TLS from the start
    #: (port 465), "none" only for a relay on loopback
    security: Literal["starttls", "ssl", "none"] = "starttls"
    username: str | None = None
    password: SecretStr | None = None
    sender: str
    to: list[str] = Field(min_length=1)
    #: CA bundle to trust for the server's certificate (a private CA); default: system CAs
    ca_file: Path | None = None

    @field_validator("to")
    @classmethod
    def _addresses(cls, v: list[str]) -> list[str]:
        for address in v:
            if "@" not in address or any(c in address for c in "\r\n,"):
                raise ValueError(f"'{address}' is not an email address")
        return v

    @model_validator(mode="after")
    def _safe(self) -> EmailConfig:
        if (self.username is None) != (self.password is None):
            raise ValueError("give both username and password, or neither")
        loopback = self.host in ("localhost", "127.0.0.1", "::1")
        if self.security == "none" and (self.username or not loopback):
            raise ValueError(
                "security 'none' sends in clear text: only for a relay on localhost without "
                "login (use starttls or ssl)"
            )
        return self


ChannelConfig = Annotated[WebhookConfig | SlackConfig | EmailConfig, Field(discriminator="type")]
#: channel type -> its config model (channels.py maps the same names to senders)
CHANNEL_TYPES: dict[str, type[_ChannelBase]] = {
    "webhook": WebhookConfig,
    "slack": SlackConfig,
    "email": EmailConfig,
}

Kind = Literal["threshold", "exceeded", "forecast", "anomaly"]
Severity = Literal["info", "warning", "critical"]
Action = Literal["notify", "throttle", "downgrade", "block"]


def _as_list(v: Any) -> Any:
    return [v] if isinstance(v, (str, int, float, Decimal)) else v


class TierMatch(_Strict):
    """Threshold percents: exact values, or a bound such as ">=80"."""

    values: frozenset[Decimal] = frozenset()
    op: Literal["", ">=", ">", "<=", "<"] = ""
    bound: Decimal = Decimal(0)

    def holds(self, percent: Decimal | None) -> bool:
        if percent is None:
            return False
        if self.values:
            return percent in self.values
        return {
            ">=": percent >= self.bound,
            ">": percent > self.bound,
            "<=": percent <= self.bound,
            "<": percent < self.bound,
        }[self.op]

    def __str__(self) -> str:
        if self.values:
            return ", ".join(str(v) for v in sorted(self.values))
        return f"{self.op}{self.bound}"

    @classmethod
    def parse(cls, spec: Any) -> TierMatch:
        if isinstance(spec, str):
            m = re.fullmatch(r"\s*(>=|<=|>|<)\s*(\d+(?:\.\d+)?)\s*", spec)
            if m:
                return cls(op=m.group(1), bound=Decimal(m.group(2)))  # type: ignore[arg-type]
        try:
            values = frozenset(Decimal(str(v)) for v in _as_list(spec))
        except (InvalidOperation, TypeError):
            values = frozenset()
        if not values or any(not v.is_finite() for v in values):
            raise ValueError(f"{spec!r}: give percents (80 or [80, 100]) or a bound ('>=80')")
        return cls(values=values)


class Match(_Strict):
    """What an alert must have for a rule to apply; a missing field matches anything."""

    budget: list[str] | None = None
    kind: list[Kind] | None = None
    severity: list[Severity] | None = None
    action: list[Action] | None = None
    tier: TierMatch | None = None

    _lists = field_validator("budget", "kind", "severity", "action", mode="before")(
        classmethod(lambda cls, v: _as_list(v))
    )

    @field_validator("budget")
    @classmethod
    def _globs(cls, v: list[str] | None) -> list[str] | None:
        for pattern in v or []:
            if not _GLOB_CHARS.match(pattern) or pattern.count("[") != pattern.count("]"):
                raise ValueError(
                    f"'{pattern}' is not a budget id or glob (letters, digits, '.', '_', "
                    "'-', and the wildcards * ? [...])"
                )
        return v

    @field_validator("tier", mode="before")
    @classmethod
    def _tier(cls, v: Any) -> Any:
        return v if v is None or isinstance(v, TierMatch) else TierMatch.parse(v)

    def describe(self) -> str:
        """The conditions in words, for `spendstream notify --check`."""
        parts = [f"{name} {' | '.join(getattr(self, name))}"
                 for name in ("budget", "kind", "severity", "action") if getattr(self, name)]  # fmt: skip
        if self.tier is not None:
            parts.append(f"tier {self.tier}")
        return " and ".join(parts) or "any alert"

    def holds(self, alert: dict[str, Any]) -> bool:
        """Whether ``alert`` (a decoded BudgetAlert record) meets every field given."""
        if self.budget is not None and not any(
            fnmatch.fnmatchcase(alert["budget_id"], p) for p in self.budget
        ):
            return False
        if self.kind is not None and alert["kind"] not in self.kind:
            return False
        if self.severity is not None and alert.get("severity", "warning") not in self.severity:
            return False
        if self.action is not None and alert.get("action", "notify") not in self.action:
            return False
        if self.tier is not None:
            pct = alert.get("threshold_percent")
            return self.tier.holds(Decimal(str(pct)) if pct is not None else None)
        return True


class Rule(_Strict):
    name: str = ""
    match: Match = Match()
    default: bool = False
    channels: list[str] = Field(min_length=1)


class NotifyRules(_Strict):
    """The rules file: channels and the routing rules that pick them (the service's
    own knobs, from the settings, are ``service_config.NotifyConfig``)."""

    channels: dict[str, ChannelConfig] = Field(min_length=1)
    rules: list[Rule] = Field(min_length=1)

    def channels_for(self, alert: dict[str, Any]) -> list[str]:
        """The channels ``alert`` goes to, in rule order without repeats: every matching
        rule's, or the default rule's when no other rule matched (none: it goes nowhere)."""
        chosen: list[str] = []
        for rule in self.rules:
            if not rule.default and rule.match.holds(alert):
                chosen.extend(c for c in rule.channels if c not in chosen)
        if not chosen:
            for rule in self.rules:
                if rule.default:
                    chosen.extend(c for c in rule.channels if c not in chosen)
        return chosen

    def secret_values(self) -> list[str]:
        return [s for c in self.channels.values() for s in c.secret_values()]


def _expand(value: Any, where: str, env: dict[str, str], missing: list[str]) -> Any:
    """Replace ${VAR} in strings with the environment's value; note every unset VAR."""
    if isinstance(value, dict):
        return {k: _expand(v, f"{where}.{k}", env, missing) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, f"{where}[{i}]", env, missing) for i, v in enumerate(value)]
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            if not env.get(m.group(1)):
                missing.append(f"{where}: environment variable {m.group(1)} is not set or empty")
                return ""
            return env[m.group(1)]

        return _ENV_REF.sub(sub, value)
    return value


def parse_config(
    text: str, source: str = "rules", env: dict[str, str] | None = None
) -> NotifyRules:
    """The rules in ``text`` (YAML or JSON), or NotifyConfigError naming every problem."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        why = getattr(exc, "problem", None) or "unreadable"
        raise NotifyConfigError(f"{source}: not valid YAML{at}: {why}") from None
    if not isinstance(raw, dict):
        raise NotifyConfigError(f"{source}: expected a mapping with 'channels' and 'rules'")
    problems: list[str] = []
    raw = _expand(raw, "", os.environ.copy() if env is None else env, problems)
    try:
        config: NotifyRules | None = NotifyRules.model_validate(raw)
    except ValidationError as exc:
        for e in exc.errors():
            parts = [str(p) for p in e["loc"]]
            if parts[:1] == ["channels"] and len(parts) > 2 and parts[2] in CHANNEL_TYPES:
                del parts[2]  # the discriminator pydantic adds to the path
            msg = e["msg"].removeprefix("Value error, ")
            if e["type"] in ("literal_error", "enum"):  # never for free text (secrets)
                msg += f" (got {e['input']!r})"
            where = ".".join(parts)
            if not any(p.startswith(f".{where}: environment variable") for p in problems):
                problems.append(f"{where}: {msg}")  # (not a consequence of a missing variable)
        config = None
    problems.extend(_cross_check(raw))
    if problems:
        lines = "\n".join(f"  {p.lstrip('.')}" for p in dict.fromkeys(problems))
        raise NotifyConfigError(f"{source} has problems:\n{lines}")
    assert config is not None
    return config


def _cross_check(raw: dict[str, Any]) -> list[str]:
    """What the models cannot see alone: rule channels that are not defined, defaults."""
    found_channels, found_rules = raw.get("channels"), raw.get("rules")
    channels: dict[str, Any] = found_channels if isinstance(found_channels, dict) else {}
    rules: list[Any] = found_rules if isinstance(found_rules, list) else []
    names = ", ".join(sorted(map(str, channels))) or "none"
    problems = []
    defaults = [i for i, r in enumerate(rules) if isinstance(r, dict) and r.get("default")]
    if len(defaults) > 1:
        problems.append(f"rules: {len(defaults)} default rules (rules {defaults}); keep one")
    for i, rule in enumerate(rules):
        if not isinstance(rule, dict):
            continue
        if rule.get("default") and rule.get("match"):
            problems.append(f"rules.{i}: a default rule takes no 'match'")
        listed = rule.get("channels")
        for c in listed if isinstance(listed, list) else []:
            if c not in channels:
                problems.append(f"rules.{i}.channels: unknown channel '{c}' (defined: {names})")
    return problems


def load_config(path: Path, env: dict[str, str] | None = None) -> NotifyRules:
    try:
        text = path.read_text()
    except OSError as exc:
        raise NotifyConfigError(f"cannot read rules file {path}: {exc.strerror}") from None
    return parse_config(text, str(path), env)
