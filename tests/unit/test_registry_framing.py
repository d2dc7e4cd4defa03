"""Confluent framing when a registry is configured; both framings always decode."""

from __future__ import annotations

import struct

import pytest

from spendstream.schemas.avro import codec, configure_registry, framed_codec
from spendstream.schemas.models import UsageEvent
from spendstream.schemas.registry import RegistryError
from tests.conftest import llm_event
from tests.registry_stub import RegistryStub


@pytest.fixture
def registry():
    stub = RegistryStub()
    configure_registry(stub.url)
    yield stub
    configure_registry(None)
    stub.close()


def test_configured_registry_frames_records_with_the_schema_id(registry):
    event = llm_event(org="acme")
    data = framed_codec("UsageEvent", "usage.llm").encode(event.to_avro())
    assert data[0] == 0
    (schema_id,) = struct.unpack(">I", data[1:5])
    assert registry.subjects["usage.llm-value"] == [schema_id]
    assert UsageEvent.from_avro(codec("UsageEvent").decode(data)) == event
    # single-object records keep decoding next to framed ones
    assert UsageEvent.decode(event.encode()) == event


def test_a_second_reader_resolves_the_id_through_the_registry(registry):
    data = framed_codec("UsageEvent", "usage.llm").encode(llm_event().to_avro())
    configure_registry(registry.url)  # a fresh process: nothing cached
    assert UsageEvent.from_avro(codec("UsageEvent").decode(data)).event_id == "e-1"
    assert any(r.startswith("GET /schemas/ids/") for r in registry.requests)


def test_unknown_schema_id_is_a_decode_error_with_reason(registry):
    with pytest.raises(ValueError, match="schema id 99"):
        codec("UsageEvent").decode(b"\x00" + struct.pack(">I", 99) + b"\x02")


def test_unreachable_registry_says_which_setting():
    configure_registry("http://127.0.0.1:9")
    try:
        with pytest.raises(RegistryError, match="SPENDSTREAM_SCHEMA_REGISTRY_URL"):
            framed_codec("UsageEvent", "usage.llm")
    finally:
        configure_registry(None)


def test_without_registry_records_use_single_object_encoding():
    configure_registry(None)
    data = framed_codec("UsageEvent", "usage.llm").encode(llm_event().to_avro())
    assert data[:2] == b"\xc3\x01"
