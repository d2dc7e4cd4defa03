"""spendstream: a stream processor for AI and API spend."""

__version__ = "0.1.0"
