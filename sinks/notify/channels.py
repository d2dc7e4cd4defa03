"""Senders: one attempt to deliver alerts to a webhook, Slack or an SMTP server.

A sender never retries and never raises for a delivery problem: it reports a SendResult,
and the dispatcher decides about retries from ``final`` and ``retry_after_s``. Error texts
go to logs and the delivery log, so every secret of the channel is replaced by "***" in
them (a Slack webhook URL is itself the credential, and urllib puts URLs in its errors).
Only the standard library is used (urllib, smtplib): no extra dependency to audit.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import http.client
import json
import re
import smtplib
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from email.message import EmailMessage
from email.utils import formatdate, parseaddr, parsedate_to_datetime
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from .config import EmailConfig, NotifyConfigError, NotifyRules, SlackConfig, WebhookConfig
from .messages import email_parts, slack_payload

USER_AGENT = "spendstream-notify/1"
#: bytes of an error response kept for the error text (Slack explains itself in the body)
_ERROR_BODY_BYTES = 300
#: parts of a secret URL (path, query) shorter than this are not worth redacting alone
_MIN_SECRET_PART = 8
#: a path segment or query value this long in a secret URL is taken for a token
_MIN_TOKEN = 16


@dataclass(frozen=True)
class SendResult:
    """The outcome of one attempt."""

    ok: bool
    #: True when retrying cannot help: HTTP 4xx other than 408/429, 3xx, SMTP 5xx,
    #: refused recipients, invalid config
    final: bool
    #: HTTP status or SMTP reply code; None for network errors and timeouts
    status: int | None
    #: the receiver's Retry-After in seconds (delta-seconds or HTTP-date), HTTP only
    retry_after_s: float | None
    #: why it failed, with every secret of the channel replaced by "***"
    error: str | None
    latency_ms: float


class Sender(Protocol):
    name: str

    def send(self, alerts: Sequence[dict[str, Any]], key: str) -> SendResult:
        """Deliver ``alerts`` (one, or several for a digest) once; ``key`` is the
        idempotency key: the alert id, or "digest-<hex>" for a digest."""
        ...


# --- redaction ----------------------------------------------------------------------


def _secret_forms(secrets: Iterable[str]) -> list[str]:
    """Every secret plus the forms it can take in an error: a URL's path and query (an
    http.client error quotes only the path), percent-decoded variants. Longest first, so
    a secret containing another is replaced whole."""
    forms: set[str] = set()
    for secret in secrets:
        if not secret:
            continue
        forms.update({secret, unquote(secret)})
        parts = urlsplit(secret)
        if parts.scheme and parts.netloc:
            tail = parts.path + (f"?{parts.query}" if parts.query else "")
            for part in (tail, parts.path, parts.query, parts.password or ""):
                if len(part) >= _MIN_SECRET_PART:
                    forms.update({part, unquote(part)})
            # a token on its own (the last segment of a Slack URL, a ?token= value)
            for piece in re.split(r"[/?&=;]", tail):
                if len(piece) >= _MIN_TOKEN:
                    forms.update({piece, unquote(piece)})
    return sorted((f for f in forms if f), key=len, reverse=True)


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with each secret (see _secret_forms) replaced by "***"."""
    for form in _secret_forms(secrets):
        text = text.replace(form, "***")
    return text


def _outcome(
    started: float,
    secrets: Sequence[str],
    ok: bool,
    final: bool,
    status: int | None,
    error: str | None,
    retry: float | None = None,
) -> SendResult:
    """A SendResult timed from ``started`` (time.monotonic), its error redacted."""
    return SendResult(
        ok=ok,
        final=final,
        status=status,
        retry_after_s=retry,
        error=None if error is None else redact(error, secrets),
        latency_ms=(time.monotonic() - started) * 1000,
    )


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --- HTTP -----------------------------------------------------------------------------


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is reported, not followed: urllib would turn the POST into a GET without
    body, and send the signature headers to wherever the Location points."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds, or an HTTP-date relative
    to ``now`` (never negative); None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


def _retryable_status(status: int) -> bool:
    return status in (408, 429) or 500 <= status <= 599


def post_json(
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    timeout_s: float,
    secrets: Sequence[str],
    now: float,
) -> SendResult:
    """POST ``body`` and classify the answer: 2xx ok; 408, 429, 5xx and network errors
    retryable; 3xx and other 4xx final (the same request will get the same answer)."""
    started = time.monotonic()

    def result(
        ok: bool, final: bool, status: int | None, error: str | None, retry: float | None = None
    ) -> SendResult:
        return _outcome(started, secrets, ok, final, status, error, retry)

    if urlsplit(url).scheme.lower() not in ("http", "https"):
        return result(False, True, None, f"invalid URL {url!r}: only http and https are sent to")
    request = urllib.request.Request(url, data=body, method="POST")
    for name, value in headers.items():
        request.add_header(name, value)
    try:
        opener = urllib.request.build_opener(_NoRedirect())  # per call: reads *_proxy now
        with opener.open(request, timeout=timeout_s) as response:
            status = response.status
            # the status is in: a slow or broken body does not undo the delivery
            with contextlib.suppress(OSError, http.client.HTTPException):
                response.read(_ERROR_BODY_BYTES)
    except urllib.error.HTTPError as exc:
        status = exc.code
        retry = parse_retry_after(exc.headers.get("Retry-After") if exc.headers else None, now)
        try:
            snippet = exc.read(_ERROR_BODY_BYTES).decode("utf-8", "replace").strip()
        except (OSError, http.client.HTTPException, AttributeError, ValueError):
            snippet = ""
        error = f"HTTP {status} {exc.reason}" + (f": {snippet}" if snippet else "")
        return result(False, not _retryable_status(status), status, error, retry)
    except http.client.InvalidURL as exc:
        return result(False, True, None, f"invalid URL: {_describe(exc)}")
    except urllib.error.URLError as exc:
        reason = exc.reason
        why = _describe(reason) if isinstance(reason, BaseException) else str(reason)
        return result(False, False, None, f"cannot connect: {why}")
    except (OSError, http.client.HTTPException) as exc:  # timeouts, resets, bad answers
        return result(False, False, None, f"request failed: {_describe(exc)}")
    except ValueError as exc:  # urllib: unknown URL type, bad header value
        return result(False, True, None, f"invalid request: {_describe(exc)}")
    if 200 <= status <= 299:
        return result(True, False, status, None)
    return result(False, not _retryable_status(status), status, f"HTTP {status}")


def _json_default(value: Any) -> Any:
    """Decimals as exact strings: an alert built outside the codec stays exact."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=_json_default).encode(
        "utf-8"
    )


def _unsendable(exc: Exception, secrets: Sequence[str]) -> SendResult:
    """An alert that cannot be encoded will not encode on a retry either."""
    return SendResult(
        False, True, None, None, redact(f"cannot encode: {_describe(exc)}", secrets), 0.0
    )


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The X-Spendstream-Signature value: "v1=" + hex HMAC-SHA256 over b"<timestamp>." +
    body. The timestamp is signed too so a captured request cannot be replayed later."""
    mac = hmac.new(secret.encode("utf-8"), timestamp.encode("ascii") + b"." + body, "sha256")
    return "v1=" + mac.hexdigest()


def verify_signature(
    secret: str,
    timestamp: str,
    body: bytes,
    signature: str,
    *,
    tolerance_s: float = 300,
    now: float | None = None,
) -> bool:
    """What a receiver checks: X-Spendstream-Timestamp within ``tolerance_s`` of ``now``
    (either way) and X-Spendstream-Signature the HMAC of that timestamp and the raw body.
    Several comma-separated signatures are accepted (any one may match) so a secret can be
    rotated. Compared in constant time."""
    timestamp = timestamp.strip()
    if not re.fullmatch(r"\d{1,15}", timestamp):
        return False
    current = time.time() if now is None else now
    if abs(current - int(timestamp)) > tolerance_s:
        return False
    expected = sign(secret, timestamp, body).encode("ascii")
    candidates = [c.strip().encode("utf-8", "replace") for c in signature.split(",")]
    matched = False
    for candidate in candidates:  # no early exit: the time does not tell which one matched
        matched |= hmac.compare_digest(expected, candidate)
    return matched


class WebhookSender:
    """POSTs the alert JSON, signed with the channel secret, to the configured URL."""

    def __init__(
        self, name: str, config: WebhookConfig, clock: Callable[[], float] = time.time
    ) -> None:
        self.name = name
        self.config = config
        self._clock = clock
        # custom header values can be credentials too (Authorization) and show in errors
        self._secrets = config.secret_values() + [v for v in config.headers.values() if len(v) >= 6]

    def send(self, alerts: Sequence[dict[str, Any]], key: str) -> SendResult:
        try:
            body = _dumps(alerts[0] if len(alerts) == 1 else {"digest": True, "alerts": alerts})
        except (TypeError, ValueError) as exc:
            return _unsendable(exc, self._secrets)
        now = self._clock()
        timestamp = str(int(now))
        headers = dict(self.config.headers)
        # ours are set last (urllib normalises header case, so these replace any config
        # header of the same name): a config typo must not break signing
        headers.update(
            {
                "Content-Type": "application/json",
                "User-Agent": USER_AGENT,
                "Idempotency-Key": key,
                "X-Spendstream-Timestamp": timestamp,
                "X-Spendstream-Signature": sign(
                    self.config.secret.get_secret_value(), timestamp, body
                ),
            }
        )
        return post_json(
            self.config.url.get_secret_value(),
            body,
            headers,
            timeout_s=self.config.timeout_s,
            secrets=self._secrets,
            now=now,
        )


class SlackSender:
    """POSTs a Block Kit message to a Slack incoming webhook (the URL is the credential)."""

    def __init__(
        self, name: str, config: SlackConfig, clock: Callable[[], float] = time.time
    ) -> None:
        self.name = name
        self.config = config
        self._clock = clock
        self._secrets = config.secret_values()

    def send(self, alerts: Sequence[dict[str, Any]], key: str) -> SendResult:
        try:
            body = _dumps(slack_payload(alerts, self.config.link))
        except (TypeError, ValueError) as exc:
            return _unsendable(exc, self._secrets)
        return post_json(
            self.config.url.get_secret_value(),
            body,
            {"Content-Type": "application/json; charset=utf-8", "User-Agent": USER_AGENT},
            timeout_s=self.config.timeout_s,
            secrets=self._secrets,
            now=self._clock(),
        )


# --- email ----------------------------------------------------------------------------


def message_id(key: str, sender: str) -> str:
    """A Message-ID fixed by the idempotency key: a retried send that did arrive the first
    time is recognisable as the same message by servers and mail clients."""
    domain = parseaddr(sender)[1].rpartition("@")[2] or "spendstream.invalid"
    domain = re.sub(r"[^A-Za-z0-9.-]", "", domain) or "spendstream.invalid"
    return f"<{hashlib.sha256(key.encode('utf-8')).hexdigest()[:40]}.spendstream@{domain}>"


def _smtp_reply(code: int, message: bytes | str) -> str:
    text = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
    return f"SMTP {code} {' '.join(text.split())}".strip()


def _hang_up(smtp: smtplib.SMTP, *, polite: bool) -> None:
    """QUIT after a delivery (a failing QUIT then changes nothing); after a failure just
    close, since a server that timed out once would make QUIT wait a second timeout."""
    if polite:
        try:
            smtp.quit()
            return
        except (smtplib.SMTPException, OSError):
            pass
    smtp.close()


class EmailSender:
    """Sends a text + HTML email over SMTP (STARTTLS, implicit TLS, or plain on loopback)."""

    def __init__(self, name: str, config: EmailConfig) -> None:
        self.name = name
        self.config = config
        self._secrets = config.secret_values()

    def _message(self, alerts: Sequence[dict[str, Any]], key: str) -> EmailMessage:
        subject, text, html = email_parts(alerts)
        msg = EmailMessage()
        msg["Subject"] = subject
        msg["From"] = self.config.sender
        msg["To"] = ", ".join(self.config.to)
        msg["Date"] = formatdate(usegmt=True)
        msg["Message-ID"] = message_id(key, self.config.sender)
        msg["X-Spendstream-Alert-Id"] = key
        msg.set_content(text)
        msg.add_alternative(html, subtype="html")
        return msg

    def _connect(self, context: ssl.SSLContext) -> smtplib.SMTP:
        c = self.config
        if c.security == "ssl":
            return smtplib.SMTP_SSL(c.host, c.port, timeout=c.timeout_s, context=context)
        smtp = smtplib.SMTP(c.host, c.port, timeout=c.timeout_s)
        try:
            if c.security == "starttls":
                smtp.ehlo()
                smtp.starttls(context=context)
                smtp.ehlo()
        except BaseException:
            smtp.close()
            raise
        return smtp

    def send(self, alerts: Sequence[dict[str, Any]], key: str) -> SendResult:
        started = time.monotonic()

        def result(ok: bool, final: bool, status: int | None, error: str | None) -> SendResult:
            return _outcome(started, self._secrets, ok, final, status, error)

        c = self.config
        try:
            msg = self._message(alerts, key)
        except (TypeError, ValueError) as exc:  # e.g. a line break in the key or an address
            return result(False, True, None, f"cannot build the message: {_describe(exc)}")
        try:
            context = ssl.create_default_context(
                cafile=str(c.ca_file) if c.ca_file is not None else None
            )
        except (OSError, ssl.SSLError) as exc:
            return result(False, True, None, f"cannot load ca_file {c.ca_file}: {_describe(exc)}")

        smtp: smtplib.SMTP | None = None
        sent = False
        try:
            smtp = self._connect(context)
            if c.username:
                password = c.password.get_secret_value() if c.password is not None else ""
                smtp.login(c.username, password)
            refused = smtp.send_message(msg)
            sent = True
        except smtplib.SMTPRecipientsRefused as exc:  # every recipient refused
            codes = [code for code, _ in exc.recipients.values()]
            error = "recipients refused: " + "; ".join(
                f"{rcpt}: {_smtp_reply(code, text)}"
                for rcpt, (code, text) in exc.recipients.items()
            )
            transient = all(400 <= code <= 499 for code in codes)  # e.g. greylisting
            return result(False, not transient, max(codes, default=None), error)
        except smtplib.SMTPNotSupportedError as exc:  # no STARTTLS/AUTH: a config mismatch
            return result(False, True, None, f"not supported by the server: {_describe(exc)}")
        except smtplib.SMTPResponseException as exc:  # auth, sender, data, helo, connect
            code = exc.smtp_code
            error = _smtp_reply(code, exc.smtp_error)
            if code <= 0:  # smtplib's marker for "no reply code"
                return result(False, False, None, error)
            return result(False, not 400 <= code <= 499, code, error)
        except ssl.SSLCertVerificationError as exc:  # the same certificate fails again
            return result(False, True, None, f"TLS certificate rejected: {_describe(exc)}")
        except (smtplib.SMTPException, OSError) as exc:  # disconnects, timeouts, refused
            return result(False, False, None, f"SMTP connection failed: {_describe(exc)}")
        finally:
            if smtp is not None:
                _hang_up(smtp, polite=sent)
        if refused:  # some recipients got it: a retry would send them a duplicate
            error = "some recipients refused: " + "; ".join(
                f"{rcpt}: {_smtp_reply(code, text)}" for rcpt, (code, text) in refused.items()
            )
            return result(False, True, max(code for code, _ in refused.values()), error)
        return result(True, False, 250, None)


# --- registry -------------------------------------------------------------------------

#: channel type -> sender factory; the keys are config.CHANNEL_TYPES' keys
SENDERS: dict[str, Callable[[str, Any], Sender]] = {
    "webhook": WebhookSender,
    "slack": SlackSender,
    "email": EmailSender,
}


def build_senders(config: NotifyRules) -> dict[str, Sender]:
    """A sender per configured channel, by channel name."""
    senders: dict[str, Sender] = {}
    for name, channel in config.channels.items():
        factory = SENDERS.get(channel.type)
        if factory is None:
            raise NotifyConfigError(f"channels.{name}: no sender for type '{channel.type}'")
        senders[name] = factory(name, channel)
    return senders
