"""The aggregator's aiokafka consumer long-polls 50 ms, not faust's hard-coded 1,500 ms
(records on partitions left out of a pending fetch waited for it: the aggregator idled
for a second at a time under a paced load)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import aiokafka
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

from spendstream.streams.app import FETCH_MAX_WAIT_MS, shorten_fetch_wait


def test_the_consumer_faust_creates_gets_the_short_wait_its_fetcher_reads():
    assert callable(AIOKafkaConsumerThread._create_worker_consumer)  # the faust hook (0.15.3)

    async def create() -> aiokafka.AIOKafkaConsumer:
        thread = SimpleNamespace(
            _create_worker_consumer=lambda transport: aiokafka.AIOKafkaConsumer(
                bootstrap_servers="127.0.0.1:9", fetch_max_wait_ms=1500
            )
        )
        shorten_fetch_wait(SimpleNamespace(_thread=thread), FETCH_MAX_WAIT_MS)
        return thread._create_worker_consumer(None)

    client = asyncio.run(create())
    assert FETCH_MAX_WAIT_MS <= 100
    assert client._fetch_max_wait_ms == FETCH_MAX_WAIT_MS  # what start() hands its Fetcher
