"""Wire bytes as text and back, one way everywhere.

Milter payloads are bytes in no declared charset. milterkit hands them to
people as ``str`` decoded as UTF-8 with ``surrogateescape``: a byte that is not
UTF-8 becomes a lone surrogate, so :func:`wire` gives back exactly the bytes
that came in. Every layer (filter API, client, results, CLI, compat) uses these
two functions, so a value never round-trips through two different codecs.
"""

from __future__ import annotations

__all__ = ["escape_char", "text", "wire"]


def text(value: bytes) -> str:
    """Wire bytes as str; surrogateescape keeps every byte, so :func:`wire` restores it."""
    return value.decode("utf-8", "surrogateescape")


def wire(value: str | bytes) -> bytes:
    """A str (or bytes, passed through) as the bytes that go on the wire."""
    return value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")


def escape_char(char: str) -> str:
    """One character as a backslash escape, for showing untrusted text to people.

    A lone surrogate is a byte of invalid UTF-8 that :func:`text` kept, so it
    shows as that byte (``\\xff``), the same as a byte escaped from ``bytes``.
    """
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"
