"""MacroStore.observer sees every stored MACRO packet (issue 18 item 6).

The observer is how code that needs each packet as sent (the libMilterPHP
layer's smficMacro) gets it without subclassing the store. It must see the
packets FilterConnection stores on its fast path (adopt(), no Macro message
built) as well as those stored with set_stage(), and only those stored.
"""

from __future__ import annotations

import pytest

from milterkit.protocol import (
    NEED_DATA,
    Command,
    Connect,
    Continue,
    EndOfMessage,
    Family,
    FilterConnection,
    Macro,
    MacroStore,
    Mail,
    Message,
    MTAConnection,
    OptNeg,
    Rcpt,
    RemoteProtocolError,
    encode_frame,
)
from milterkit.protocol.filter import Event
from milterkit.protocol.macros import MacroObserver

Pairs = tuple[tuple[bytes, bytes], ...]
CONNECT = Connect(b"client.example.org", Family.INET, 50000, b"192.0.2.10")


class Recorder:
    """An observer that keeps what it was called with."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, Pairs]] = []

    def __call__(self, stage: int, pairs: Pairs) -> None:
        self.seen.append((stage, pairs))


def negotiated(observer: MacroObserver | None) -> tuple[MTAConnection, FilterConnection]:
    """An MTA side and a filter side past OPTNEG, the filter's store observed."""
    mta, flt = MTAConnection(), FilterConnection()
    flt.macros.observer = observer
    flt.receive_data(mta.send(MTAConnection.default_offer()))
    assert isinstance(flt.next_event(), OptNeg)
    mta.receive_data(flt.negotiate())
    assert isinstance(mta.next_event(), OptNeg)
    return mta, flt


def deliver(mta: MTAConnection, flt: FilterConnection, *messages: Message) -> list[Event]:
    """Send ``messages`` MTA -> filter; the events the filter returns."""
    flt.receive_data(b"".join(mta.send(m) for m in messages))
    events = []
    while (event := flt.next_event()) is not NEED_DATA:
        events.append(event)
    return events


def test_every_packet_on_the_fast_path_is_seen_in_order() -> None:
    seen = Recorder()
    mta, flt = negotiated(seen)
    big = tuple((b"m%d" % i, b"v" * 20) for i in range(60))  # over 1024 bytes: caps first
    packets = [
        Macro(Command.CONNECT, ((b"j", b"mx.example"), (b"{daemon_name}", b"smtpd"))),
        Macro(Command.CONNECT, ((b"_", b"client [192.0.2.10]"),)),  # replaces the first
        Macro(Command.HELO, ()),  # a stage letter and no pairs
        Macro(Command.HELO, big),
    ]
    events = deliver(mta, flt, *packets, CONNECT)
    assert [type(e) for e in events] == [Connect]
    assert seen.seen == [(p.stage, p.pairs) for p in packets]
    assert flt.macros.lookup("daemon_name") is None  # the store did its job as well
    assert flt.macros.lookup("{_}") == b"client [192.0.2.10]"
    assert flt.macros.lookup("m59") == b"v" * 20


def answer(mta: MTAConnection, flt: FilterConnection, *messages: Message) -> None:
    """Send ``messages``; the last is a command the filter answers with CONTINUE."""
    *_, event = deliver(mta, flt, *messages)
    assert type(event) is type(messages[-1])
    mta.receive_data(flt.send(Continue()))
    assert isinstance(mta.next_event(), Continue)


def test_packets_of_later_messages_are_seen_too() -> None:
    """The first macros of a new message (stale ones dropped first) reach the observer."""
    seen = Recorder()
    mta, flt = negotiated(seen)
    answer(mta, flt, CONNECT)
    for sender in (b"<a@example.org>", b"<b@example.org>"):
        answer(mta, flt, Macro(Command.MAIL, ((b"{mail_addr}", sender),)), Mail(sender))
        answer(mta, flt, Rcpt(b"<r@example.net>"))
        answer(mta, flt, Macro(Command.BODYEOB, ((b"i", sender[1:2]),)), EndOfMessage())
    assert seen.seen == [
        (Command.MAIL, ((b"{mail_addr}", b"<a@example.org>"),)),
        (Command.BODYEOB, ((b"i", b"a"),)),
        (Command.MAIL, ((b"{mail_addr}", b"<b@example.org>"),)),
        (Command.BODYEOB, ((b"i", b"b"),)),
    ]
    assert flt.macros.lookup("mail_addr") == b"<b@example.org>"


def test_ignored_and_refused_packets_are_not_seen() -> None:
    """Only stored packets are reported: no stage byte, a letter no MTA uses, over a cap."""
    seen = Recorder()
    mta, flt = negotiated(seen)
    flt.macros.max_macros = 3
    flt.receive_data(encode_frame(Command.MACRO, b""))  # no stage byte
    flt.receive_data(encode_frame(Command.MACRO, b"Zj\0mx.example\0"))  # not a stage letter
    assert flt.next_event() is NEED_DATA
    assert seen.seen == []
    flt.receive_data(mta.send(Macro(Command.CONNECT, tuple((b"m%d" % i, b"v") for i in range(4)))))
    with pytest.raises(RemoteProtocolError) as raised:
        flt.next_event()
    assert str(raised.value) == (
        "MACRO packets would hold 4 macros, over the limit of 3 per connection (max_macros)"
    )
    assert seen.seen == []


def test_set_stage_is_seen_like_adopt() -> None:
    """The general path (a decoded Macro message) reports the same (stage, pairs)."""
    seen = Recorder()
    store = MacroStore(observer=seen)
    pairs = ((b"{i}", b"4XyZ"), (b"j", b"mx.example"))
    store.set_stage(Command.BODYEOB, pairs)
    store.adopt(bytes([Command.BODYEOB]) + b"{i}\x004XyZ\x00j\x00mx.example\x00")
    store.set_stage(ord("Z"), pairs)  # ignored, as adopt() ignores it
    assert seen.seen == [(Command.BODYEOB, pairs), (Command.BODYEOB, pairs)]
    assert store.held == (2, len(b"{i}\x004XyZ\x00j\x00mx.example\x00"))


def test_replacing_and_removing_the_observer() -> None:
    first, second = Recorder(), Recorder()
    store = MacroStore(observer=first)
    store.adopt(b"Cj\0one\0")
    store.observer = second
    store.adopt(b"Cj\0two\0")
    store.observer = None
    store.adopt(b"Cj\0three\0")
    assert first.seen == [(Command.CONNECT, ((b"j", b"one"),))]
    assert second.seen == [(Command.CONNECT, ((b"j", b"two"),))]
    assert store.lookup("j") == b"three"


class ObserverError(Exception):
    pass


def test_an_observer_error_propagates_with_the_packet_stored() -> None:
    """What the observer raises comes out of next_event unchanged; the connection
    stays usable: the packet is stored and the next command still arrives."""

    def fail(stage: int, pairs: Pairs) -> None:
        raise ObserverError(f"observer rejects stage {chr(stage)}")

    mta, flt = negotiated(fail)
    flt.receive_data(mta.send(Macro(Command.CONNECT, ((b"j", b"mx.example"),))) + mta.send(CONNECT))
    with pytest.raises(ObserverError, match=r"^observer rejects stage C$"):
        flt.next_event()
    assert flt.macros.lookup("j") == b"mx.example"
    assert isinstance(flt.next_event(), Connect)


def test_unread_payload_is_checked_at_receipt_and_split_on_first_read() -> None:
    """The store keeps a payload unsplit until a read, but refuses a bad one at once."""
    store = MacroStore()
    with pytest.raises(RemoteProtocolError, match=r"MACRO: payload .* is not NUL-terminated"):
        store.adopt(b"Mi\x00id1\x00{mail_addr}\x00a@b")
    assert store.held == (0, 0)
    store.adopt(b"Mi\x00id1\x00{mail_addr}\x00a@b\x00dangling\x00")
    assert store.held == (2, len(b"i\x00id1\x00{mail_addr}\x00a@b\x00dangling\x00"))
    assert store.lookup("mail_addr") == b"a@b"
    assert store.stage(ord("M")) == {b"i": b"id1", b"mail_addr": b"a@b"}
    assert store.held[0] == 2  # reading changed nothing that counts against the caps


def test_duplicate_names_count_once_per_pair_against_the_cap() -> None:
    store = MacroStore(max_macros=3)
    store.adopt(b"Ci\x00a\x00i\x00b\x00")
    assert store.held[0] == 2
    assert store.lookup("i") == b"b"  # the later value wins, as before
    with pytest.raises(RemoteProtocolError, match="would hold 4 macros"):
        store.adopt(b"Hx\x00a\x00y\x00b\x00")
