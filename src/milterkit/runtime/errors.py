"""Exceptions raised by the daemon runtime.

Configuration mistakes (a malformed socket spec, an unknown user, a path that
is unsafe to use) are reported as :class:`RuntimeConfigError` so that a
command-line front end can catch a single type and print a one-line message
instead of a traceback.
"""

from __future__ import annotations

__all__ = ["RuntimeConfigError"]


class RuntimeConfigError(Exception):
    """A runtime setting is invalid or cannot be applied.

    The message always names both the problem and the offending value, because
    the operator reading it usually only has the configuration file at hand.
    """
