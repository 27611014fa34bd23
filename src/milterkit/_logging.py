"""SessionLogger: the per-connection logger adapter, kept out of session.py.

Its base class is chosen under ``if TYPE_CHECKING`` (LoggerAdapter is generic to
mypy on every Python version, but subscriptable at run time only from 3.11).
mypyc treats the run-time branch of such a choice as unreachable, so this
module stays interpreted and session.py, which uses it, can be compiled.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

__all__ = ["SessionLogger"]

if TYPE_CHECKING:
    _LoggerAdapter = logging.LoggerAdapter[logging.Logger]
else:
    # LoggerAdapter is subscriptable at runtime only from Python 3.11 (typeshed
    # declares it generic on every version, so mypy cannot see the difference).
    _LoggerAdapter = logging.LoggerAdapter


class SessionLogger(_LoggerAdapter):
    """Prefixes every line with the connection id, so one session's lines can be grepped."""

    def process(self, message: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = self.extra or {}
        return f"[{extra.get('conn', '?')}] {message}", kwargs
