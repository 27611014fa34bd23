"""Exceptions of the protocol core.

Like h11: :class:`LocalProtocolError` means *we* tried to do something the
protocol forbids (a bug in the caller), :class:`RemoteProtocolError` means the
peer sent something malformed or out of place. Both derive from
:class:`ProtocolError`, the only exceptions the core raises for bad input.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Base class of every protocol violation the core detects."""


class LocalProtocolError(ProtocolError):
    """This side tried to send something the protocol or the negotiation forbids."""


class RemoteProtocolError(ProtocolError):
    """The peer sent a malformed, oversized or out-of-order packet."""
