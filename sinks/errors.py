"""Errors of ClickHouse access, in a module of their own so every sink module can raise
them without importing the connection code."""

from __future__ import annotations

from spendstream.errors import SpendstreamError


class WarehouseError(SpendstreamError, RuntimeError):
    """ClickHouse could not be reached or refused a query; the message says what to do."""


class QueryRefused(WarehouseError):
    """A statement a read-only port does not run (it would write, reach files or the
    network, or read outside the spendstream database); the message says why."""
