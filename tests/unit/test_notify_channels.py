"""Senders against real local servers: an HTTP server in a thread and aiosmtpd."""

from __future__ import annotations

import email
import email.policy
import hashlib
import hmac
import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from pydantic import SecretStr

from spendstream.sinks.notify.channels import (
    SENDERS,
    EmailSender,
    SlackSender,
    WebhookSender,
    build_senders,
    message_id,
    parse_retry_after,
    redact,
    verify_signature,
)
from spendstream.sinks.notify.config import (
    CHANNEL_TYPES,
    EmailConfig,
    SlackConfig,
    WebhookConfig,
    parse_config,
)
from spendstream.sinks.notify.messages import slack_payload, summary

SECRET = "whsec-0123456789abcdef"
NOW = 1_800_000_000.0


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
        "message": "Team A passed 80%",
        "triggered_by": "e-9",
        "triggered_at": "2026-11-15T12:00:00+00:00",
        "projected_total": "1240.5",
    }
    base.update(over)
    return base


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- HTTP -----------------------------------------------------------------------------


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    #: "{url}" and "{path}" are replaced by the request's, to test echoing receivers
    body: str = "ok"
    delay_s: float = 0.0


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: bytes


class HookServer:
    """Records every POST and answers the scripted replies in order (then 200 ok)."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.replies: list[Reply] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.requests.append(Recorded(self.path, dict(self.headers.items()), body))
                reply = outer.replies.pop(0) if outer.replies else Reply()
                time.sleep(reply.delay_s)
                text = reply.body.replace("{path}", self.path).replace(
                    "{url}", f"{outer.url}{self.path}"
                )
                data = text.encode()
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def header(self, name: str, index: int = -1) -> str | None:
        """A header of a recorded request, by case-insensitive name."""
        headers = self.requests[index].headers
        return next((v for k, v in headers.items() if k.lower() == name.lower()), None)


@pytest.fixture
def hook() -> Iterator[HookServer]:
    server = HookServer()
    server.thread.start()
    try:
        yield server
    finally:
        server.server.shutdown()
        server.server.server_close()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """A proxy from the environment would take the 127.0.0.1 requests elsewhere."""
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)


def webhook(url: str, **over: Any) -> WebhookSender:
    config = WebhookConfig(type="webhook", url=url, secret=SECRET, **over)
    return WebhookSender("ops-hook", config, clock=lambda: NOW)


def test_webhook_body_headers_and_signature(hook: HookServer) -> None:
    sender = webhook(f"{hook.url}/spend", headers={"X-Team": "finance"})
    result = sender.send([alert()], "al-1")
    assert result.ok and not result.final
    assert result.status == 200 and result.error is None and result.retry_after_s is None
    assert result.latency_ms >= 0

    (req,) = hook.requests
    assert req.path == "/spend"
    assert req.body == json.dumps(alert(), separators=(",", ":"), sort_keys=True).encode()
    assert json.loads(req.body) == alert()
    assert hook.header("Content-Type") == "application/json"
    assert hook.header("User-Agent") == "spendstream-notify/1"
    assert hook.header("Idempotency-Key") == "al-1"
    assert hook.header("X-Team") == "finance"
    timestamp = hook.header("X-Spendstream-Timestamp")
    signature = hook.header("X-Spendstream-Signature")
    assert timestamp == str(int(NOW))
    assert signature is not None and timestamp is not None
    # what the README tells receivers: hex HMAC-SHA256 over b"<timestamp>." + raw body
    expected = hmac.new(SECRET.encode(), f"{timestamp}.".encode() + req.body, hashlib.sha256)
    assert signature == "v1=" + expected.hexdigest()

    assert verify_signature(SECRET, timestamp, req.body, signature, now=NOW)
    assert verify_signature(SECRET, timestamp, req.body, signature, now=NOW + 299)
    assert not verify_signature(SECRET, timestamp, req.body + b" ", signature, now=NOW)
    tampered = req.body.replace(b"812.6", b"1.0")
    assert tampered != req.body
    assert not verify_signature(SECRET, timestamp, tampered, signature, now=NOW)
    assert not verify_signature("another-secret-value", timestamp, req.body, signature, now=NOW)
    assert not verify_signature(SECRET, timestamp, req.body, signature, now=NOW + 301)  # old
    assert not verify_signature(SECRET, timestamp, req.body, signature, now=NOW - 301)  # future
    assert not verify_signature(SECRET, str(int(NOW) + 1), req.body, signature, now=NOW)
    assert not verify_signature(SECRET, "abc", req.body, signature, now=NOW)
    assert verify_signature(SECRET, timestamp, req.body, f"v1=deadbeef, {signature}", now=NOW)
    # the default "now" is the real clock: a fresh signature verifies
    fresh = str(int(time.time()))
    sig = "v1=" + hmac.new(SECRET.encode(), f"{fresh}.x".encode(), hashlib.sha256).hexdigest()
    assert verify_signature(SECRET, fresh, b"x", sig)


def test_webhook_digest_body(hook: HookServer) -> None:
    alerts = [alert(), alert(alert_id="al-2", budget_id="team-b")]
    assert webhook(hook.url).send(alerts, "digest-0a1b").ok
    body = hook.requests[0].body
    assert json.loads(body) == {"digest": True, "alerts": alerts}
    assert hook.header("Idempotency-Key") == "digest-0a1b"
    ts, sig = hook.header("X-Spendstream-Timestamp"), hook.header("X-Spendstream-Signature")
    assert ts and sig and verify_signature(SECRET, ts, body, sig, now=NOW)


def test_config_headers_cannot_replace_the_signature(hook: HookServer) -> None:
    # the rules file refuses such a header (test_notify_routing); the sender still wins
    config = WebhookConfig.model_construct(
        **{**WebhookConfig(type="webhook", url=hook.url, secret=SECRET).__dict__,
           "headers": {"x-spendstream-signature": "v1=forged"}}
    )  # fmt: skip
    sender = WebhookSender("ops-hook", config, clock=lambda: NOW)
    assert sender.send([alert()], "al-1").ok
    sig = hook.header("X-Spendstream-Signature")
    ts = hook.header("X-Spendstream-Timestamp")
    assert sig != "v1=forged"
    assert ts and sig and verify_signature(SECRET, ts, hook.requests[0].body, sig, now=NOW)


@pytest.mark.parametrize(
    ("reply", "ok", "final", "retry_after"),
    [
        (Reply(204, body=""), True, False, None),
        (Reply(500, body="boom"), False, False, None),
        (Reply(503, {"Retry-After": "30"}), False, False, 30.0),
        (Reply(429, {"Retry-After": "7"}), False, False, 7.0),
        (Reply(429, {"Retry-After": formatdate(NOW + 120, usegmt=True)}), False, False, 120.0),
        (Reply(429, {"Retry-After": formatdate(NOW - 60, usegmt=True)}), False, False, 0.0),
        (Reply(429, {"Retry-After": "soon"}), False, False, None),
        (Reply(408), False, False, None),
        (Reply(410, body="gone"), False, True, None),
        (Reply(400, body="invalid_payload"), False, True, None),
        (Reply(401), False, True, None),
        (Reply(301, {"Location": "/elsewhere"}), False, True, None),
        (Reply(307, {"Location": "/elsewhere"}), False, True, None),
    ],
)
def test_http_classification(
    hook: HookServer, reply: Reply, ok: bool, final: bool, retry_after: float | None
) -> None:
    hook.replies.append(reply)
    result = webhook(hook.url).send([alert()], "al-1")
    assert (result.ok, result.final, result.status) == (ok, final, reply.status)
    assert result.retry_after_s == retry_after
    if ok:
        assert result.error is None
    else:
        assert result.error is not None and str(reply.status) in result.error
        if reply.body not in ("", "ok"):
            assert reply.body in result.error  # the receiver's explanation is kept
    assert len(hook.requests) == 1  # a redirect is reported, not followed


def test_connection_refused_is_retryable() -> None:
    result = webhook(f"http://127.0.0.1:{free_port()}/hook").send([alert()], "al-1")
    assert not result.ok and not result.final
    assert result.status is None and result.retry_after_s is None
    assert result.error and "cannot connect" in result.error


def test_timeout_is_retryable(hook: HookServer) -> None:
    hook.replies.append(Reply(200, delay_s=0.6))
    result = webhook(hook.url, timeout_s=0.2).send([alert()], "al-1")
    assert not result.ok and not result.final and result.status is None
    assert result.error and "timed out" in result.error


def test_webhook_secret_never_in_error(hook: HookServer) -> None:
    hook.replies.append(Reply(401, body=f"bad signature, expected key {SECRET}"))
    result = webhook(f"{hook.url}/h?token=abcdefgh12345678").send([alert()], "al-1")
    assert result.final and result.error
    assert SECRET not in result.error and "abcdefgh12345678" not in result.error
    assert "***" in result.error


SLACK_TOKEN = "xoxbTOKENsecret0123456789"


@pytest.mark.parametrize(
    ("path", "reply"),
    [
        (f"/services/T0001/B0001/{SLACK_TOKEN}", Reply(404, body="no_service for {url}")),
        (f"/services/T0001/B0001/{SLACK_TOKEN}", Reply(500, body="failed at {path}")),
        (f"/services/T0001/B0001/{SLACK_TOKEN} x", None),  # http.client quotes the path
    ],
)
def test_slack_url_never_in_error(hook: HookServer, path: str, reply: Reply | None) -> None:
    if reply:
        hook.replies.append(reply)
    url = f"{hook.url}{path}"
    sender = SlackSender("finance", SlackConfig(type="slack", url=url))
    result = sender.send([alert()], "al-1")
    assert not result.ok and result.error
    assert SLACK_TOKEN not in result.error and url not in result.error
    assert "***" in result.error
    if reply is None:
        assert result.final and not hook.requests  # an unusable URL is a config problem


def test_non_http_url_is_final_and_redacted() -> None:
    url = f"ftp://hooks.example/services/T0001/B0001/{SLACK_TOKEN}"
    # the rules file refuses such a URL (test_notify_routing); the sender refuses it too
    config = SlackConfig.model_construct(
        **{**SlackConfig(type="slack", url="https://x.example/a").__dict__, "url": SecretStr(url)}
    )
    result = SlackSender("finance", config).send([alert()], "al-1")
    assert result.final and not result.ok and result.status is None
    assert result.error and SLACK_TOKEN not in result.error and "***" in result.error


def test_slack_payload_posted(hook: HookServer) -> None:
    template = "https://grafana.example/d/spend?var-budget={budget_id}"
    config = SlackConfig(type="slack", url=f"{hook.url}/services/T/B/{SLACK_TOKEN}", link=template)
    alerts = [alert(), alert(alert_id="al-2", budget_id="team b")]
    result = SlackSender("finance", config).send(alerts, "digest-ff")
    assert result.ok and result.status == 200
    (req,) = hook.requests
    assert req.path == f"/services/T/B/{SLACK_TOKEN}"
    assert (hook.header("Content-Type") or "").startswith("application/json")
    posted = json.loads(req.body)
    assert posted == slack_payload(alerts, template)
    assert posted["text"] == "2 budget alerts"
    assert "var-budget=team%20b" in json.dumps(posted)


def test_redact_covers_url_parts() -> None:
    url = f"https://hooks.slack.com/services/T0/B0/{SLACK_TOKEN}"
    text = f"error for {url}; path /services/T0/B0/{SLACK_TOKEN}; token {SLACK_TOKEN}"
    out = redact(text, [url])
    assert SLACK_TOKEN not in out and "hooks.slack.com/services" not in out
    assert redact("HTTP 500", ["https://x.example/"]) == "HTTP 500"  # a short path stays


def test_parse_retry_after() -> None:
    assert parse_retry_after("7", NOW) == 7.0
    assert parse_retry_after(" 120 ", NOW) == 120.0
    assert parse_retry_after(formatdate(NOW + 90, usegmt=True), NOW) == 90.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", NOW) == 0.0
    assert parse_retry_after("-5", NOW) is None
    assert parse_retry_after("", NOW) is None
    assert parse_retry_after(None, NOW) is None


def test_registry_covers_every_channel_type() -> None:
    assert set(SENDERS) == set(CHANNEL_TYPES)
    config = parse_config(
        """
channels:
  hook: {type: webhook, url: "https://h.example/x", secret: "${S}"}
  chat: {type: slack, url: "https://hooks.slack.com/services/T/B/C"}
  mail: {type: email, host: smtp.example, sender: a@example.com, to: [b@example.com]}
rules:
  - default: true
    channels: [hook, chat, mail]
""",
        env={"S": SECRET},
    )
    senders = build_senders(config)
    assert {n: type(s) for n, s in senders.items()} == {
        "hook": WebhookSender,
        "chat": SlackSender,
        "mail": EmailSender,
    }
    assert all(s.name == n for n, s in senders.items())


# --- SMTP -----------------------------------------------------------------------------


class Inbox:
    """An aiosmtpd handler that keeps messages, or answers RCPT/DATA with a set reply."""

    def __init__(
        self,
        rcpt_reply: str | None = None,
        data_reply: str | None = None,
        refuse: str | None = None,
    ) -> None:
        self.rcpt_reply, self.data_reply, self.refuse = rcpt_reply, data_reply, refuse
        self.received: list[tuple[Any, bool]] = []

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if self.rcpt_reply:
            return self.rcpt_reply
        if address == self.refuse:
            return "550 5.1.1 No such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.data_reply:
            return self.data_reply
        self.received.append((envelope, session.authenticated))
        return "250 Message accepted for delivery"


@pytest.fixture
def smtp_server() -> Iterator[Any]:
    """smtp_server(handler, **smtp_params) -> port; every started server is stopped."""
    controllers: list[Controller] = []

    def start(handler: Inbox, **params: Any) -> int:
        port = free_port()
        controller = Controller(handler, hostname="127.0.0.1", port=port, **params)
        controller.start()
        controllers.append(controller)
        return port

    yield start
    for controller in controllers:
        controller.stop()


def mail_config(port: int, **over: Any) -> EmailConfig:
    values: dict[str, Any] = {
        "type": "email",
        "host": "127.0.0.1",
        "port": port,
        "security": "none",
        "sender": "Spendstream <spend@example.com>",
        "to": ["finance@example.com", "cfo@example.com"],
        "timeout_s": 5,
    }
    values.update(over)
    return EmailConfig(**values)


def parse(envelope: Any) -> email.message.EmailMessage:
    msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    return msg


def test_email_plain_relay(smtp_server: Any) -> None:
    inbox = Inbox()
    sender = EmailSender("mail", mail_config(smtp_server(inbox)))
    result = sender.send([alert(budget_name="<script>x</script>")], "al-1")
    assert result.ok and not result.final and result.status == 250 and result.error is None

    [(envelope, authenticated)] = inbox.received
    assert not authenticated
    assert envelope.mail_from == "spend@example.com"
    assert envelope.rcpt_tos == ["finance@example.com", "cfo@example.com"]
    msg = parse(envelope)
    assert msg["X-Spendstream-Alert-Id"] == "al-1"
    assert msg["Message-ID"] == message_id("al-1", "spend@example.com")
    assert msg["To"] == "finance@example.com, cfo@example.com"
    assert msg["Subject"] == "[spendstream] warning: <script>x</script> reached 80% of its budget"
    assert msg.get_content_type() == "multipart/alternative"
    parts = {p.get_content_type(): p.get_content() for p in msg.iter_parts()}
    assert set(parts) == {"text/plain", "text/html"}
    assert summary(alert(budget_name="<script>x</script>")) in parts["text/plain"]
    assert "&lt;script&gt;" in parts["text/html"] and "<script>" not in parts["text/html"]

    assert sender.send([alert()], "al-1").ok  # a retry carries the same Message-ID
    assert parse(inbox.received[1][0])["Message-ID"] == msg["Message-ID"]
    assert message_id("al-2", "spend@example.com") != msg["Message-ID"]


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl CLI is not installed: cannot make a test certificate")
    tmp = tmp_path_factory.mktemp("tls")
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"]
        + ["-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return cert, key


@dataclass
class Logins:
    attempts: list[tuple[str, bytes, bytes]] = field(default_factory=list)

    def __call__(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        self.attempts.append((mechanism, auth_data.login, auth_data.password))
        ok = auth_data.login == b"alice" and auth_data.password == b"s3cret-pass-word"
        return AuthResult(success=ok, handled=False)


def tls_server(
    smtp_server: Any, certificate: tuple[Path, Path], inbox: Inbox, *, implicit: bool = False
) -> tuple[int, Logins]:
    cert, key = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    logins = Logins()
    tls = {"ssl_context": context} if implicit else {"tls_context": context}
    port = smtp_server(
        inbox,
        require_starttls=not implicit,
        # aiosmtpd counts only STARTTLS as TLS for AUTH; implicit TLS is TLS from the start
        auth_require_tls=not implicit,
        authenticator=logins,
        **tls,
    )
    return port, logins


def test_email_starttls_with_login(smtp_server: Any, certificate: tuple[Path, Path]) -> None:
    inbox = Inbox()
    port, logins = tls_server(smtp_server, certificate, inbox)
    config = mail_config(
        port,
        security="starttls",
        username="alice",
        password="s3cret-pass-word",
        ca_file=certificate[0],
    )
    result = EmailSender("mail", config).send([alert()], "al-1")
    assert result.ok, result.error
    [(envelope, authenticated)] = inbox.received
    assert authenticated
    assert [(login, pw) for _, login, pw in logins.attempts] == [(b"alice", b"s3cret-pass-word")]
    assert parse(envelope)["X-Spendstream-Alert-Id"] == "al-1"


def test_email_wrong_password_is_final_and_redacted(
    smtp_server: Any, certificate: tuple[Path, Path]
) -> None:
    inbox = Inbox()
    port, logins = tls_server(smtp_server, certificate, inbox)
    config = mail_config(
        port,
        security="starttls",
        username="alice",
        password="wrong-pass-123",
        ca_file=certificate[0],
    )
    result = EmailSender("mail", config).send([alert()], "al-1")
    assert not result.ok and result.final and result.status == 535
    assert result.error and "wrong-pass-123" not in result.error
    assert logins.attempts and not inbox.received


def test_email_untrusted_certificate_is_final(
    smtp_server: Any, certificate: tuple[Path, Path]
) -> None:
    port, logins = tls_server(smtp_server, certificate, Inbox())
    config = mail_config(port, security="starttls", username="alice", password="s3cret-pass-word")
    result = EmailSender("mail", config).send([alert()], "al-1")  # system CAs only
    assert not result.ok and result.final and result.status is None
    assert result.error and "certificate" in result.error
    assert not logins.attempts  # the password never left


def test_email_implicit_tls(smtp_server: Any, certificate: tuple[Path, Path]) -> None:
    inbox = Inbox()
    port, _ = tls_server(smtp_server, certificate, inbox, implicit=True)
    config = mail_config(
        port, security="ssl", username="alice", password="s3cret-pass-word", ca_file=certificate[0]
    )
    result = EmailSender("mail", config).send([alert()], "al-1")
    assert result.ok, result.error
    assert inbox.received[0][1]  # authenticated


@pytest.mark.parametrize(
    ("inbox", "final", "status"),
    [
        (Inbox(rcpt_reply="451 4.7.1 Greylisted, try again later"), False, 451),
        (Inbox(data_reply="451 4.3.0 Temporary local problem"), False, 451),
        (Inbox(rcpt_reply="550 5.1.1 No such user"), True, 550),
        (Inbox(data_reply="554 5.6.0 Message rejected"), True, 554),
        (Inbox(refuse="cfo@example.com"), True, 550),  # partly delivered: no duplicate
    ],
)
def test_email_smtp_replies(smtp_server: Any, inbox: Inbox, final: bool, status: int) -> None:
    result = EmailSender("mail", mail_config(smtp_server(inbox))).send([alert()], "al-1")
    assert not result.ok
    assert (result.final, result.status) == (final, status)
    assert result.error and str(status) in result.error


def test_email_connection_refused_is_retryable() -> None:
    result = EmailSender("mail", mail_config(free_port())).send([alert()], "al-1")
    assert not result.ok and not result.final and result.status is None
    assert result.error


def test_email_missing_ca_file_is_final(tmp_path: Path) -> None:
    config = mail_config(free_port(), security="starttls", ca_file=tmp_path / "missing.pem")
    result = EmailSender("mail", config).send([alert()], "al-1")
    assert not result.ok and result.final and result.error and "ca_file" in result.error
