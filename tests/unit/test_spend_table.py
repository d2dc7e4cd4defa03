"""The spend table's changelog records are written by the output producer, not faust's:
they must be exactly what faust writes for the table, so its recovery reads them back."""

from __future__ import annotations

import asyncio
from typing import Any

import faust
from faust.types import TP, Message

from spendstream.streams.aggregation import PeriodState
from spendstream.streams.spend_table import SpendTable


def _table(app_id: str = "spendtest") -> Any:
    app = faust.App(app_id, store="memory://", autodiscover=False)
    return app.Table("budget-spend", default=None, key_type=str, value_type=str)


class Sent(list[tuple[str, bytes | None, bytes | None, int]]):
    def __call__(self, topic: str, key: bytes | None, value: bytes | None, *,
                 partition: int) -> None:  # fmt: skip
        self.append((topic, key, value, partition))


def _state() -> str:
    state = PeriodState.loads(None)
    state.apply_fields("usage:1", 7, 1_234_567_891, 1_700_000_000_000_000,
                       1_699_999_000_000_000, 1_702_000_000_000_000)  # fmt: skip
    return state.dumps()


def test_a_state_is_held_and_sent_to_its_partition_of_the_changelog() -> None:
    table, sent = _table(), Sent()
    spend = SpendTable(table, sent)
    value = _state()
    spend.put("b1|2026-11", value, 3)
    assert spend.get("b1|2026-11") == value
    assert table.data._key_partition["b1|2026-11"] == 3  # dropped if partition 3 is lost
    [(topic, key, raw, partition)] = sent
    assert (topic, partition) == ("spendtest-budget-spend-changelog", 3)
    assert spend.get("b2|2026-11") is None


def test_the_records_are_faust_s_own_and_recovery_restores_the_state() -> None:
    table, sent = _table(), Sent()
    spend = SpendTable(table, sent)
    value = _state()
    spend.put("team-ü|2026-11", value, 1)
    [(topic, key, raw, partition)] = sent
    changelog = table.changelog_topic
    assert key == changelog.prepare_key("team-ü|2026-11", table.key_serializer)[0]
    assert raw == changelog.prepare_value(value, table.value_serializer)[0]

    # another worker's recovery: faust decodes the changelog record and applies it
    fresh = _table()
    message = Message(topic, partition, 0, 0.0, 0, None, key, raw, None, tp=TP(topic, partition))
    event = asyncio.run(fresh.changelog_topic.decode(message))
    fresh.apply_changelog_batch([event])
    assert fresh.get("team-ü|2026-11") == value
    restored = PeriodState.loads(fresh.get("team-ü|2026-11"))
    assert restored.spent_nanos == 1_234_567_891
    assert not restored.admit("usage:1", 7)  # the watermark came back with it
