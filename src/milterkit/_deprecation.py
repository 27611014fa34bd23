"""One wording for the names kept for one release after a rename (issue 12).

Each old spelling still works and warns with :class:`DeprecationWarning`,
naming its replacement, so a user sees what to change in the line that uses
it (``stacklevel`` points there). The test configuration turns milterkit's
own DeprecationWarnings into errors, so milterkit never uses an old name.
"""

from __future__ import annotations

import warnings
from typing import Any

__all__ = ["change_header_args", "insert_header_args", "warn_renamed"]


def warn_renamed(old: str, new: str, *, stacklevel: int = 3) -> None:
    """Warn that ``old`` is deprecated in favour of ``new`` (both as the user writes them).

    ``stacklevel`` 3 is the caller of the function that calls this one.
    """
    warnings.warn(
        f"{old} is deprecated and will be removed in the next release; use {new}",
        DeprecationWarning,
        stacklevel=stacklevel,
    )


def insert_header_args(name: Any, value: Any, index: Any, *, what: str) -> tuple[str, str, int]:
    """``(name, value, index)`` for an ``insert_header``-style call, old order included.

    The order was ``(index, name, value)``, libmilter's ``smfi_insheader``; an
    int first is that order, reordered with a warning. ``what`` is the
    function's name as the warning shows it.
    """
    if isinstance(name, int) and not isinstance(name, bool):
        warn_renamed(f"{what}(index, name, value)", f"{what}(name, value, index)", stacklevel=4)
        return value, index, name
    return name, value, index


def change_header_args(name: Any, value: Any, index: Any, *, what: str) -> tuple[str, str, int]:
    """``(name, value, index)`` for a ``change_header``-style call, old order included.

    The order was ``(name, index, value)``, libmilter's ``smfi_chgheader``; an
    int second is that order, reordered with a warning.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        warn_renamed(f"{what}(name, index, value)", f"{what}(name, value, index)", stacklevel=4)
        return name, index, value
    return name, value, index
