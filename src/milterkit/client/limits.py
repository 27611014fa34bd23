"""What a filter can make the client hold, and the header names it may use.

The client runs filters nobody vetted (``milterkit check`` is a debugging
tool), so a filter's replies are bounded like an MTA's input: a reply packet
may not be larger than the negotiated data size (Sendmail and libmilter keep
to it too; Postfix alone accepts 1 GiB), a message's replies may not exceed
:data:`DEFAULT_MAX_REPLY_BYTES` nor carry more than
:data:`DEFAULT_MAX_MODIFICATIONS` modifications, and a header a filter adds
or changes must have an RFC 5322 field name. Breaking one of these is a
:class:`RemoteProtocolError` that names the limit.
"""

from __future__ import annotations

import re

from milterkit.protocol.constants import MAX_DATA_SIZE
from milterkit.protocol.errors import RemoteProtocolError
from milterkit.protocol.messages import AddHeader, ChangeHeader, InsertHeader, Message

__all__ = [
    "DEFAULT_MAX_MODIFICATIONS",
    "DEFAULT_MAX_REPLY_BYTES",
    "OPTNEG_REPLY_LIMIT",
    "check_modification",
    "check_reply_bytes",
    "is_field_name",
]

#: Modifications one message's end-of-message reply may carry. Real filters
#: send a handful (a few headers, a recipient or two, a body replacement in
#: chunks); ten thousand leaves room for body rewrites in small chunks.
DEFAULT_MAX_MODIFICATIONS = 10_000
#: Bytes of replies (modifications included) per message: room for replacing
#: the body of a large message (Postfix's default message_size_limit is 10 MB).
DEFAULT_MAX_REPLY_BYTES = 64 * 1024 * 1024
#: Payload limit before negotiation: the OPTNEG reply, macro lists included.
OPTNEG_REPLY_LIMIT = MAX_DATA_SIZE

_FIELD_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]+")


def is_field_name(name: bytes) -> bool:
    """RFC 5322 field-name: one or more printable US-ASCII characters except colon."""
    return _FIELD_NAME.fullmatch(name) is not None


def check_modification(message: Message, count: int, limit: int | None) -> None:
    """Refuse the ``count``-th modification of a message if over ``limit`` or malformed."""
    if limit is not None and count > limit:
        raise RemoteProtocolError(
            f"filter sent more than {limit} modifications for one message (max_modifications)"
        )
    if isinstance(message, AddHeader | InsertHeader | ChangeHeader) and not is_field_name(
        message.name
    ):
        raise RemoteProtocolError(
            f"filter sent header name {message.name[:80]!r}, which is not an RFC 5322 "
            "field name (printable US-ASCII except ':')"
        )


def check_reply_bytes(total: int, limit: int | None) -> None:
    """Refuse once the replies to one message pass ``limit`` bytes."""
    if limit is not None and total > limit:
        raise RemoteProtocolError(
            f"filter sent more than {limit} bytes of replies for one message (max_reply_bytes)"
        )
