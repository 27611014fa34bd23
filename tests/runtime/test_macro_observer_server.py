"""A MacroStore.observer that raises closes only its connection, as an internal error.

The observer is plumbing, not a milter callback: what it raises is a bug, so
the server logs it with the traceback and closes that connection, and the
next connection is served as usual (docs/protocol-notes.md, Macros).
"""

from __future__ import annotations

import logging

import pytest

from milterkit.milter import Milter
from milterkit.protocol import Command, Connect, Family, Macro, OptNeg, Quit
from milterkit.protocol import messages as wire
from milterkit.runtime.server import Server
from tests.runtime.test_server_mta import OFFER_V6, RawMTA, inet_listener, serving, wait_for

CONNECT = Connect(b"client.example", Family.INET, 4567, b"192.0.2.1")


class ObserverError(Exception):
    pass


def refuse_helo_macros(stage: int, pairs: tuple[tuple[bytes, bytes], ...]) -> None:
    if stage == Command.HELO:
        raise ObserverError(f"observer refuses {pairs[0][0]!r}")


class Observing(Milter):
    def negotiate(self, offer: OptNeg) -> OptNeg | None:
        self.macro_values.store.observer = refuse_helo_macros
        return super().negotiate(offer)

    def connect(self, hostname: str, family: Family, address: str | None, port: int | None) -> None:
        return None

    def helo(self, name: str) -> None:
        return None


def test_an_observer_error_closes_that_connection_only(caplog: pytest.LogCaptureFixture) -> None:
    sock = inet_listener()
    server = Server(Observing, sock)
    with caplog.at_level(logging.ERROR, "milterkit"), serving(server):
        with RawMTA.connect(sock.getsockname()[:2]) as mta:
            mta.negotiate(OFFER_V6)
            mta.send(Macro(Command.CONNECT, ((b"j", b"mx.example"),)))
            assert mta.command(CONNECT) == [wire.Continue()]
            mta.send(Macro(Command.HELO, ((b"{tls_version}", b"TLSv1.3"),)))
            assert mta.wait_closed()
        wait_for(lambda: caplog.records, 10, "the error line")
        [record] = caplog.records
        assert "internal error, closing connection from" in record.getMessage()
        assert record.exc_info is not None
        assert str(record.exc_info[1]) == "observer refuses b'{tls_version}'"
        with RawMTA.connect(sock.getsockname()[:2]) as mta:  # the next one is served
            mta.negotiate(OFFER_V6)
            assert mta.command(CONNECT) == [wire.Continue()]
            mta.send(Quit())
            assert mta.wait_closed()
