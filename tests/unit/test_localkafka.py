"""The local broker's cluster id is one the KRaft storage tool accepts."""

from __future__ import annotations

import re

from spendstream.localkafka import new_cluster_id


def test_cluster_ids_are_22_url_safe_characters_never_starting_with_a_dash() -> None:
    ids = [new_cluster_id() for _ in range(5000)]  # ~78 would start with "-" unchecked
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{22}", i) for i in ids)
    assert not any(i.startswith("-") for i in ids)
    assert len(set(ids)) == len(ids)
