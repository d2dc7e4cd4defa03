"""Source kinds: one module per kind, registered in ``registry.py`` (docs/extending.md).

Importing this package is cheap; the built-in kinds are loaded on the first
``sources()`` call.
"""

from .registry import (
    WIRE_KINDS,
    PayloadFormat,
    SourceError,
    SourceKind,
    SourceRegistry,
    register,
    sources,
)

__all__ = [
    "WIRE_KINDS",
    "PayloadFormat",
    "SourceError",
    "SourceKind",
    "SourceRegistry",
    "register",
    "sources",
]
