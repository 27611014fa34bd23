"""Property tests: exact round-trips, and robustness against hostile byte streams.

The number of examples is kept small so the file runs in a few seconds; set
``MILTERKIT_FUZZ_EXAMPLES`` (e.g. 20000) for a long local run.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from milterkit.protocol import (
    MAX_DATA_SIZE,
    NEED_DATA,
    POSTFIX_MAX_PACKET,
    Abort,
    Accept,
    Action,
    AddHeader,
    AddRecipient,
    AddRecipientPar,
    Body,
    ChangeFrom,
    ChangeHeader,
    Command,
    Connect,
    ConnectionClosed,
    ConnFail,
    Continue,
    Data,
    DeleteRecipient,
    Discard,
    EndOfHeaders,
    EndOfMessage,
    Family,
    FilterConnection,
    Header,
    Helo,
    InsertHeader,
    LocalProtocolError,
    Macro,
    Mail,
    Message,
    MTAConnection,
    OptNeg,
    Progress,
    ProtocolError,
    ProtocolFlag,
    Quarantine,
    Quit,
    QuitNoClose,
    Rcpt,
    Reject,
    ReplaceBody,
    ReplyCodePacket,
    Shutdown,
    Skip,
    TempFail,
    Unknown,
    decode_command,
    decode_reply,
)
from milterkit.protocol.constants import REPLY_ACTION, V1_ACTIONS
from tests.protocol.vectors import all_vector_files, load

EXAMPLES = int(os.environ.get("MILTERKIT_FUZZ_EXAMPLES", "0"))


def fuzz_settings(default: int) -> Callable[[Any], Any]:
    return settings(
        max_examples=EXAMPLES or default,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        derandomize=not EXAMPLES,  # CI runs are reproducible; long runs explore
    )


# ----------------------------------------------------------------------- strategies

u32 = st.integers(0, 0xFFFFFFFF)
text = st.binary(max_size=24).map(lambda b: b.replace(b"\0", b"."))
raw = st.binary(max_size=300)

st_optneg = st.builds(
    OptNeg,
    u32,
    u32.map(Action),
    u32.map(ProtocolFlag),
    st.lists(st.tuples(u32, text), max_size=4).map(tuple),
)
st_macro = st.one_of(
    st.just(Macro(None)),
    st.builds(
        Macro,
        st.integers(0, 255),
        st.lists(st.tuples(text, text), max_size=4).map(tuple),
        st.none() | text,
    ),
)
st_connect = st.one_of(
    st.builds(Connect, text, st.just(Family.UNKNOWN)),
    st.builds(
        Connect,
        text,
        st.sampled_from([Family.UNIX, Family.INET, Family.INET6]),
        st.integers(0, 0xFFFF),
        text,
    ),
)
st_args = st.lists(text, max_size=4).map(tuple)
st_reply_line = st.text(st.characters(codec="utf-8", exclude_characters="\r\n\0"), max_size=30)


@st.composite
def st_replycode(draw: st.DrawFn) -> ReplyCodePacket:
    code = draw(st.integers(400, 599))
    enhanced = draw(
        st.none()
        | st.tuples(st.integers(0, 999), st.integers(0, 999)).map(
            lambda t: f"{str(code)[0]}.{t[0]}.{t[1]}"
        )
    )
    lines = draw(st.lists(st_reply_line, min_size=1, max_size=4))
    return ReplyCodePacket.build(code, lines, enhanced)


COMMANDS = st.one_of(
    st_optneg,
    st_macro,
    st_connect,
    st.builds(Helo, text),
    st.builds(Mail, text, st_args),
    st.builds(Rcpt, text, st_args),
    st.builds(Header, text, text),
    st.builds(Body, raw),
    st.builds(EndOfMessage, raw),
    st.builds(Unknown, text),
    st.sampled_from([Data(), EndOfHeaders(), Abort(), Quit(), QuitNoClose()]),
)
REPLIES = st.one_of(
    st_optneg,
    st_replycode(),
    st.builds(AddHeader, text, text),
    st.builds(InsertHeader, u32, text, text),
    st.builds(ChangeHeader, u32, text, text),
    st.builds(ChangeFrom, text, st.none() | text),
    st.builds(AddRecipient, text),
    st.builds(AddRecipientPar, text, st.none() | text),
    st.builds(DeleteRecipient, text),
    st.builds(ReplaceBody, raw),
    st.builds(Quarantine, text),
    st.sampled_from(
        [
            Continue(),
            Accept(),
            Reject(),
            TempFail(),
            Discard(),
            Skip(),
            Progress(),
            Shutdown(),
            ConnFail(),
        ]
    ),
)


@fuzz_settings(300)
@given(COMMANDS)
def test_command_roundtrip(message: Message) -> None:
    payload = message.payload()
    decoded = decode_command(message.code, payload)
    assert decoded == message
    assert decoded.encode() == message.encode()
    assert (
        message.encode() == (len(payload) + 1).to_bytes(4, "big") + bytes((message.code,)) + payload
    )


@fuzz_settings(300)
@given(REPLIES)
def test_reply_roundtrip(message: Message) -> None:
    payload = message.payload()
    decoded = decode_reply(message.code, payload)
    assert decoded == message
    assert decoded.encode() == message.encode()


@fuzz_settings(200)
@given(st.integers(0, 255), st.binary(max_size=64))
def test_decoding_any_payload_raises_only_protocol_errors(code: int, payload: bytes) -> None:
    for decode in (decode_command, decode_reply):
        try:
            message = decode(code, payload)
        except ProtocolError:
            continue
        assert message.payload() == payload  # whatever decodes re-encodes exactly


# ------------------------------------------------------------------ stream drivers


def _split(data: bytes, sizes: list[int]) -> list[bytes]:
    out, pos, i = [], 0, 0
    while pos < len(data):
        step = sizes[i % len(sizes)] if sizes else len(data)
        out.append(data[pos : pos + step])
        pos += step
        i += 1
    return out


class FilterDriver:
    """Answers everything the FilterConnection says is due, like a permissive filter."""

    def __init__(self, protocol: ProtocolFlag, actions: Action) -> None:
        self.conn = FilterConnection()
        self.protocol = protocol
        self.actions = actions

    def bound(self) -> int:
        size = self.conn.negotiated.max_data_size if self.conn.negotiated else MAX_DATA_SIZE
        return size + 5

    def pump(self) -> None:
        while True:
            event = self.conn.next_event()
            if event is NEED_DATA or isinstance(event, ConnectionClosed):
                break
            assert isinstance(event, Message)
            self.answer(event)
        assert self.conn.buffered <= self.bound()

    def answer(self, event: Message) -> None:
        conn = self.conn
        if isinstance(event, OptNeg):
            offered = Action(int(event.actions) or int(V1_ACTIONS))  # 0 means the v1 set
            conn.negotiate(actions=self.actions & offered, protocol=self.protocol)
            return
        if conn.awaiting is None:
            return
        negotiated = conn.negotiated
        assert negotiated is not None
        replies: list[Message] = []
        if conn.awaiting == Command.BODYEOB:
            replies.append(Progress())
            if negotiated.actions & Action.ADD_HEADERS:
                replies.append(AddHeader(b"X-Fuzz", b"1"))
            if negotiated.actions & Action.CHANGE_BODY:
                replies.append(ReplaceBody(b"new body\r\n"))
        elif conn.awaiting == Command.BODY and negotiated.protocol & ProtocolFlag.SKIP:
            replies.append(Skip())
            conn.send_all(replies)
            return
        replies.append(Continue())
        conn.send_all(replies)

    def run(self, chunks: list[bytes]) -> None:
        try:
            for chunk in chunks:
                self.conn.receive_data(chunk)
                self.pump()
            self.conn.receive_data(b"")
            self.pump()
        except LocalProtocolError:
            raise  # the core told us a reply was due and then refused it: a bug
        except ProtocolError:
            pass


class MTADriver:
    """Replays recorded MTA commands whenever no reply is due; feeds filter bytes."""

    def __init__(self, commands: list[Message]) -> None:
        self.conn = MTAConnection()
        self.commands = list(commands)

    def advance(self) -> None:
        while self.commands and self.conn.awaiting is None:
            message = self.commands.pop(0)
            if isinstance(message, OptNeg) and self.conn.offer is not None:
                continue
            if self.conn.negotiated is None and not isinstance(message, OptNeg):
                return
            if isinstance(message, Body):
                for chunk in self.conn.body_chunks(message.chunk):
                    self.conn.send(chunk)
                continue
            self.conn.send(message)

    def pump(self) -> None:
        while True:
            event = self.conn.next_event()
            if event is NEED_DATA or isinstance(event, ConnectionClosed):
                break
            self.advance()
        assert self.conn.buffered <= POSTFIX_MAX_PACKET - 1 + 5

    def run(self, chunks: list[bytes]) -> None:
        try:
            self.advance()
            for chunk in chunks:
                self.conn.receive_data(chunk)
                self.pump()
            self.conn.receive_data(b"")
            self.pump()
        except LocalProtocolError:
            raise
        except ProtocolError:
            pass


VECTORS = {p.stem: load(p) for p in all_vector_files()}
SESSIONS = sorted(VECTORS)


def _stream(name: str, direction: str) -> bytes:
    return b"".join(p.raw for p in VECTORS[name] if p.direction == direction)


def _commands(name: str) -> list[Message]:
    return [decode_command(p.raw[4], p.payload) for p in VECTORS[name] if p.direction == "mta"]


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "set"]))
        pos = draw(st.integers(0, max(len(buf) - 1, 0)))
        if op == "insert" or not buf:
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del buf[pos : pos + draw(st.integers(1, 8))]
        elif op == "flip":
            buf[pos] ^= 1 << draw(st.integers(0, 7))
        else:
            buf[pos] = draw(st.integers(0, 255))
    return bytes(buf)


protocol_choices = st.sampled_from(
    [
        ProtocolFlag(0),
        ProtocolFlag.NOUNKNOWN | ProtocolFlag.SKIP,
        ProtocolFlag.NR_HDR | ProtocolFlag.NR_BODY | ProtocolFlag.NOEOH,
        ProtocolFlag.NOCONNECT | ProtocolFlag.NOHELO | ProtocolFlag.NOMAIL | ProtocolFlag.NORCPT,
        ProtocolFlag(0x1FF000) | ProtocolFlag.MDS_256K,
    ]
)
action_choices = st.sampled_from([Action(0), Action.ADD_HEADERS | Action.CHANGE_BODY])
splits = st.lists(st.integers(1, 97), max_size=6)


@fuzz_settings(120)
@given(st.binary(max_size=400), splits, protocol_choices)
def test_filter_survives_arbitrary_bytes(
    data: bytes, sizes: list[int], proto: ProtocolFlag
) -> None:
    FilterDriver(proto, Action(0)).run(_split(data, sizes))


@fuzz_settings(120)
@given(st.binary(max_size=200), splits)
def test_filter_survives_arbitrary_bytes_after_a_valid_start(data: bytes, sizes: list[int]) -> None:
    start = MTAConnection.default_offer().encode() + Connect(b"h", Family.UNKNOWN).encode()
    FilterDriver(ProtocolFlag(0), Action(0)).run(_split(start + data, sizes))


@fuzz_settings(120)
@given(st.binary(max_size=400), splits)
def test_mta_survives_arbitrary_bytes(data: bytes, sizes: list[int]) -> None:
    MTADriver(_commands("postfix37-v6-basic")).run(_split(data, sizes))


@fuzz_settings(120)
@given(st.binary(max_size=200), splits)
def test_mta_survives_arbitrary_bytes_after_optneg(data: bytes, sizes: list[int]) -> None:
    reply = OptNeg(6, Action.all(), ProtocolFlag.SKIP).encode()
    MTADriver(_commands("postfix37-v6-modifications")).run(_split(reply + data, sizes))


@fuzz_settings(150)
@given(st.sampled_from(SESSIONS), st.data(), splits, protocol_choices, action_choices)
def test_filter_survives_mutated_sessions(
    name: str, data: st.DataObject, sizes: list[int], proto: ProtocolFlag, actions: Action
) -> None:
    stream = data.draw(mutated(_stream(name, "mta")))
    FilterDriver(proto, actions).run(_split(stream, sizes))


@fuzz_settings(150)
@given(st.sampled_from(SESSIONS), st.data(), splits)
def test_mta_survives_mutated_sessions(name: str, data: st.DataObject, sizes: list[int]) -> None:
    stream = data.draw(mutated(_stream(name, "filter")))
    MTADriver(_commands(name)).run(_split(stream, sizes))


@pytest.mark.parametrize("name", SESSIONS)
def test_unmutated_sessions_run_clean(name: str) -> None:
    """The drivers themselves complete every recorded session without any error."""
    driver = MTADriver(_commands(name))
    stream = _stream(name, "filter")
    driver.advance()
    for chunk in _split(stream, [13]):
        driver.conn.receive_data(chunk)
        driver.pump()
    assert driver.conn.awaiting is None
    assert not driver.commands

    filt = FilterDriver(ProtocolFlag(0), Action.all())
    for chunk in _split(_stream(name, "mta"), [13]):
        filt.conn.receive_data(chunk)
        filt.pump()
    filt.conn.receive_data(b"")
    filt.pump()
    assert filt.conn.awaiting is None


def test_modification_table_covers_every_modification() -> None:
    assert set(REPLY_ACTION) == {
        m.code
        for m in (
            AddHeader(b"", b""),
            InsertHeader(0, b"", b""),
            ChangeHeader(0, b"", b""),
            ChangeFrom(b""),
            AddRecipient(b""),
            AddRecipientPar(b""),
            DeleteRecipient(b""),
            ReplaceBody(b""),
            Quarantine(b""),
        )
    }
