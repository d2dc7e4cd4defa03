"""One root for every error spendstream raises on purpose.

``SpendstreamError`` is what the CLI catches and shows as one line (exit code 1);
``UserError`` marks what the person running the command can fix (input, configuration,
a file); the others are operational (Kafka unreachable, ClickHouse refusing, a service
that died). Each class also keeps its builtin base (ValueError, RuntimeError), so code
that catches those, pydantic's validators included, still does.
tests/unit/test_errors.py checks that every public error class derives from the root.
"""


class SpendstreamError(Exception):
    """An error spendstream raises on purpose; its message is the whole story."""


class UserError(SpendstreamError):
    """Something the user can fix: bad input, configuration or file."""
