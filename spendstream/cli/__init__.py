"""The ``spendstream`` command. Every failure ends in one clear message, never a traceback.

One module per command group (``kafka``, ``services``, ``budgets``, ``alerts``, ``usage``,
``query``, ``fx``, ``demo``), what they share in ``base`` (``_run``, ``CliError``), the root
app in ``app``; views that others print too live in ``spendstream.render``."""

from spendstream.cli.app import app, main

__all__ = ["app", "main"]
