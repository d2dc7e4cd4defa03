"""Only records an agent was handed may become committable offsets.

faust-streaming 0.15 acknowledges a record that its stream *skips* during a rebalance
(flow control suspended, or fetched in an older consumer generation): ``Stream`` calls
``event.ack()`` on it so that lag does not grow. The consumer then treats that offset as
processed, and the commit faust makes while partitions are being revoked can move the
group's offset past it. The record is never seen again by this worker (it seeks to that
committed offset) nor by the partition's next owner: an input lost without a trace. The
fault suite found this as one event in a few thousand missing from ClickHouse and the
stream state when workers joined or left.

A record a stream delivers is marked ``tracked`` before any agent code sees it; a skipped
one never is. The guard refuses acks of untracked records, so the committed offset stays
at or before the skipped record and it is fetched again after the rebalance.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

log = logging.getLogger("spendstream.worker")


def guard_acks(consumer: Any, metrics: Counter[str]) -> None:
    """Wrap ``consumer.ack`` so untracked (skipped, never processed) records stay unacked."""
    ack = consumer.ack

    def guarded_ack(message: Any) -> bool:
        if not message.tracked:
            metrics["skipped_acks_refused"] += 1
            log.info(
                "not acking %s offset %d: skipped by its stream during a rebalance; "
                "it will be fetched again",
                message.tp,
                message.offset,
            )
            return False
        return bool(ack(message))

    consumer.ack = guarded_ack
