"""Wire bytes as text and back, one way everywhere.

Milter payloads are bytes in no declared charset. milterkit hands them to
people as ``str`` decoded as UTF-8 with ``surrogateescape``: a byte that is not
UTF-8 becomes a lone surrogate, so :func:`wire` gives back exactly the bytes
that came in. Every layer (filter API, client, results, CLI, compat) uses these
two functions, so a value never round-trips through two different codecs.
"""

from __future__ import annotations

__all__ = ["text", "wire"]


def text(value: bytes) -> str:
    """Wire bytes as str; surrogateescape keeps every byte, so :func:`wire` restores it."""
    return value.decode("utf-8", "surrogateescape")


def wire(value: str | bytes) -> bytes:
    """A str (or bytes, passed through) as the bytes that go on the wire."""
    return value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")
