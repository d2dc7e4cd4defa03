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
