"""`spendstream publish FILE` on the real broker: a bad line is reported, the rest is sent."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from spendstream.readback import read_topic
from spendstream.schemas.avro import codec
from spendstream.topics import ensure_topics

pytestmark = pytest.mark.integration


def event(event_id: str) -> bytes:
    return json.dumps({
        "event_id": event_id, "occurred_at": "2026-11-24T10:00:00Z", "source": "llm",
        "attributes": {"org": "acme"},
        "payload": {"kind": "llm", "provider": "openai", "model": "gpt-4o-mini",
                    "input_tokens": 100},
    }).encode()  # fmt: skip


def test_a_line_that_is_not_utf8_is_reported_and_the_rest_is_sent(settings, tmp_path):
    ensure_topics(settings)
    bad = b'{"event_id": "bad-\xff\xfe", "source": "llm"}'
    usage = tmp_path / "usage.jsonl"
    usage.write_bytes(b"\n".join([event("good-1"), bad, event("good-2"), b"", event("good-3")]))
    result = subprocess.run(
        [sys.executable, "-m", "spendstream.cli", "publish", str(usage)],
        env={**os.environ, **settings.to_env()}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "sent 3, failed 0, rejected 1" in result.stdout
    assert "line 2: not valid UTF-8 (byte 0xff" in result.stdout
    assert "unexpected error" not in result.stdout + result.stderr
    stored = read_topic(settings, settings.topics.llm, lambda v: codec("UsageEvent").decode(v))
    assert sorted(record["event_id"] for _, record in stored) == ["good-1", "good-2", "good-3"]


def test_a_batch_results_file_is_published_whole_with_unbilled_and_bad_lines_counted(
    settings, tmp_path
):
    from tests.unit.test_billing_modes import (
        GEMINI_LINE,
        OPENAI_BATCH_LINE,
        VERTEX_LINE,
        anthropic_result,
    )

    ensure_topics(settings)
    failed = {"id": "batch_req_9", "custom_id": "r-9", "response": None,
              "error": {"code": "batch_expired", "message": "expired"}}  # fmt: skip
    lines = [OPENAI_BATCH_LINE, failed, anthropic_result(), anthropic_result("canceled"),
             GEMINI_LINE, VERTEX_LINE]  # fmt: skip
    results = tmp_path / "results.jsonl"
    results.write_text("\n".join([*map(json.dumps, lines), '{"custom_id": "x", "result": 1}']))
    result = subprocess.run(
        [sys.executable, "-m", "spendstream.cli", "publish", str(results)],
        env={**os.environ, **settings.to_env()}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr  # line 7 is bad
    assert "sent 4 (4 batch calls), failed 0, rejected 1, not billed 2" in result.stdout
    assert "line 7:" in result.stdout and "Traceback" not in result.stdout + result.stderr
    assert "publishing" not in result.stdout  # progress goes to stderr
    stored = read_topic(settings, settings.topics.llm, lambda v: codec("UsageEvent").decode(v))
    payloads = {record["event_id"]: record["payload"] for _, record in stored}
    assert sorted(payloads) == ["anthropic:msg_01XFDUDYJgAACzvnptvVoYEL",
                                "google:mKd6aOWnDr2m1MkP8ZqS0Ac", "google:vtx-1",
                                "openai:batch_req_6740a9d8b7e48190a2c7b3c0b9b6b3f1"]  # fmt: skip
    assert all(p["batch"] for p in payloads.values())
    assert payloads["anthropic:msg_01XFDUDYJgAACzvnptvVoYEL"]["cache_write_1h_tokens"] == 2500
