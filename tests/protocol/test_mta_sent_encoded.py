"""MTAConnection.sent_encoded: a load generator's cached bytes, through the public API."""

from __future__ import annotations

import pytest

from milterkit.protocol import OptNeg
from milterkit.protocol.constants import Action, Command, ProtocolFlag
from milterkit.protocol.errors import LocalProtocolError
from milterkit.protocol.mta import MTAConnection


def test_sent_encoded_waits_for_the_reply_of_a_preencoded_command() -> None:
    mta = MTAConnection()
    with pytest.raises(LocalProtocolError):
        mta.sent_encoded(Command.MAIL)  # nothing negotiated yet
    mta.send(OptNeg(6, Action(0x1FF), ProtocolFlag(0)))
    mta.receive_data(OptNeg(6, Action(0), ProtocolFlag(0)).encode())
    assert isinstance(mta.next_event(), OptNeg)
    mta.sent_encoded(Command.MAIL)
    assert mta.awaiting == Command.MAIL
    with pytest.raises(LocalProtocolError, match="waiting for the reply to MAIL"):
        mta.sent_encoded(Command.RCPT)
