"""Power Automate flow runs, billed per run.

Canonical name ``power_automate``: what events have always carried in ``platform``, the
catalog's key and what ClickHouse stores, so budgets scoped on it and stored rows keep
matching. ``power-automate`` (the CLI's old ``--source`` name) is accepted everywhere
on input and read as ``power_automate``.
"""

from __future__ import annotations

from collections.abc import Mapping

from spendstream.builders import from_power_automate_run

from .workflow import engine


def _is_run(data: Mapping[str, object]) -> bool:
    props = data.get("properties")
    return isinstance(props, Mapping) and "startTime" in props


KIND = engine(
    "power_automate",
    from_power_automate_run,
    _is_run,
    label="a Power Automate run",
    aliases=("power-automate",),
    order=60,
)
