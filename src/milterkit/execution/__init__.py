"""The old name of :mod:`milterkit.runtime.execution`, kept so existing imports work.

How callbacks run (inline, in the thread pool, interrupted) is daemon runtime,
so the module moved under :mod:`milterkit.runtime`. Importing
``milterkit.execution`` gives that same module object, not a copy: every name
(private ones too) and anything patched on it are shared. The explicit import
below is what type checkers see.

A package rather than an ``execution.py`` file so that git sees the old file
as moved, and carries edits made to it elsewhere over to its new place.
"""

from __future__ import annotations

import sys

from milterkit.runtime import execution as _execution
from milterkit.runtime.execution import (
    EXECUTION_MODES,
    CallbackInterrupted,
    CallbackRunner,
    CallScope,
    ExecutionSettings,
    LoopWatchdog,
    current_scope,
    within,
)

__all__ = [
    "EXECUTION_MODES",
    "CallScope",
    "CallbackInterrupted",
    "CallbackRunner",
    "ExecutionSettings",
    "LoopWatchdog",
    "current_scope",
    "within",
]

sys.modules[__name__] = _execution
