"""Safe output for strings a milter chose: escaped, encodable, written atomically.

``milterkit check`` prints what a filter sent (macro names, reply texts, a
quarantine reason, header names and values, addresses). A hostile filter can
put terminal escape sequences or invalid UTF-8 there; printed raw they would
drive the user's terminal or crash a strict stdout. Everything it shows goes
through :func:`printable`; JSON goes through :func:`json_safe`; the ``--apply``
file is written by :func:`write_atomically`, which never follows a symlink at
the output path.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from milterkit.protocol.text import escape_char

__all__ = ["encodable", "json_safe", "printable", "printable_reply", "write_atomically"]

# C0 and C1 controls, DEL, lone surrogates (invalid UTF-8 decoded with
# surrogateescape) and the format characters that reorder text (bidi controls).
_JSON_UNSAFE = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\u200e\u200f\u202a-\u202e\u2066-\u2069]"
)


def printable(text: str) -> str:
    """``text`` with every non-printable character shown as a backslash escape.

    A byte of invalid UTF-8 (a surrogate from ``surrogateescape``) shows as
    ``\\xNN``, the byte itself; a control character as ``\\xNN`` or ``\\uNNNN``.
    Printable text, non-ASCII included, is unchanged.
    """
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() or ch == " " else escape_char(ch) for ch in text)


def printable_reply(text: str) -> str:
    """An SMTP reply for display: its CRLF line breaks kept, everything else escaped."""
    return "\r\n".join(printable(line) for line in text.split("\r\n"))


def json_safe(text: str) -> str:
    """JSON text with controls, surrogates and bidi controls as ``\\uNNNN`` escapes.

    Only valid inside JSON strings, which is the only place ``json.dumps``
    puts such characters; the result parses to the same value.
    """
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def encodable(text: str, encoding: str | None) -> str:
    """``text`` made writable in ``encoding``: what it cannot encode is backslash-escaped."""
    if not encoding:
        return text
    try:
        text.encode(encoding)
    except UnicodeEncodeError:
        return text.encode(encoding, "backslashreplace").decode(encoding)
    except LookupError:
        return text
    return text


def write_atomically(path: str, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it over ``path``.

    The rename replaces whatever is at ``path`` (a symlink included) instead
    of writing through it, so a link planted there cannot make us truncate
    its target; readers see the old file or the new one, never a partial one.
    The new file gets the usual mode (0666 minus the umask).
    """
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
