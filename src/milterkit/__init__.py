"""milterkit: the Sendmail/Postfix milter protocol in pure Python.

Write a filter by subclassing :class:`Milter`; serve it with :func:`run`;
check any milter with :mod:`milterkit.client`; test yours in memory with
:mod:`milterkit.testing`. The sans-I/O protocol core is :mod:`milterkit.protocol`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# First: under MILTERKIT_PURE=1 this makes the imports below load .py sources.
from milterkit._compiled import compiled
from milterkit.decision import Decision
from milterkit.milter import (
    Accept,
    ActionNotNegotiatedError,
    BodyNotCollectedError,
    Continue,
    Discard,
    Milter,
    Reject,
    ReplyCode,
    Response,
    Skip,
    TempFail,
    blocking,
)
from milterkit.protocol.constants import Action, Family, MacroStage, ProtocolFlag

__version__ = "0.1.0"

if TYPE_CHECKING:
    from milterkit.runtime.daemon import run as run

__all__ = [
    "Accept",
    "Action",
    "ActionNotNegotiatedError",
    "BodyNotCollectedError",
    "Continue",
    "Decision",
    "Discard",
    "Family",
    "MacroStage",
    "Milter",
    "ProtocolFlag",
    "Reject",
    "ReplyCode",
    "Response",
    "Skip",
    "TempFail",
    "__version__",
    "blocking",
    "compiled",
    "run",
]


def __getattr__(name: str) -> Any:
    """``milterkit.run`` loads on first use: writing a milter needs no daemon code."""
    if name == "run":
        from milterkit.runtime.daemon import run

        return run
    raise AttributeError(f"module 'milterkit' has no attribute {name!r}")
