"""The MTA side of a milter conversation, sans I/O: what to send, what it meant.

:class:`MTASession` owns one :class:`~milterkit.protocol.MTAConnection` and
an :class:`~milterkit.mtaprofile.MTAProfile`. It hands out *exchanges*: an
:class:`Opening` (OPTNEG, CONNECT, HELO) and then one :class:`MessageRun` per
message (MAIL ... EOM). Neither touches a socket or a clock, so the same code
drives a blocking socket (:mod:`milterkit.client.sync`), an asyncio stream
(:mod:`milterkit.client.aio`), an in-memory ``FilterConnection`` (the test
harness), or a replay of recorded bytes. As with h11, every call that has
bytes for the filter returns them; nothing is written or queued behind the
caller's back.

Driving an exchange (the whole contract)::

    def drive(exchange, transport):
        out = exchange.start()
        while True:
            if out:
                transport.write(out)        # bytes for the filter, in order
            if exchange.done:
                return
            data = transport.read()         # b"" once the filter closed
            out = exchange.receive_data(data)

    session = MTASession(POSTFIX, client=ClientInfo("192.0.2.1", 50000))
    drive(session.opening(), transport)
    run = session.message(message_bytes, "alice@example.org", ["bob@example.net"])
    drive(run, transport)
    result = run.result                     # a CheckResult
    transport.write(session.quit())         # trailing ABORTs + QUIT

An in-memory harness makes ``transport.write`` feed a ``FilterConnection``
(``receive_data``/``next_event``) and ``transport.read`` return the bytes of
the filter's replies (``FilterConnection.send``); see
``tests/client/test_session.py`` for a complete loop.

Rules the driver can rely on:

* Whenever ``done`` is False after ``start()``/``receive_data()``, the filter
  owes a reply; ``exchange.stage`` names the step it owes it for
  (``"optneg"``, ``"connect"``, ``"helo"``, ``"mail"``, ``"rcpt"``,
  ``"data"``, ``"header"``, ``"eoh"``, ``"body"``, ``"eom"``), for timeouts
  and error messages. ``receive_data`` may return ``b""`` while a reply is
  still incomplete: just read again.
* When ``done`` turns True the returned bytes are empty. Packets that need
  no reply and that a real MTA writes lazily (Postfix's ABORT after a
  message) are the exchange's :attr:`Exchange.trailing` bytes; the session
  puts them in front of the next exchange's first bytes, or of
  :meth:`MTASession.quit` / :meth:`MTASession.abort`.
* An exchange keeps its own state (its stages, its result, a verdict that
  ends the session); the session reads a finished exchange when the next one
  is asked for, so the connection-level facts (:attr:`MTASession.verdict`)
  change only between exchanges.
* Filter misbehaviour raises :class:`~milterkit.protocol.RemoteProtocolError`
  from ``receive_data``; the session is then unusable, as it is for an MTA.
"""

from __future__ import annotations

import ipaddress
import random
import re
import string
from abc import ABC, abstractmethod
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass

from milterkit.client.limits import (
    DEFAULT_MAX_MODIFICATIONS,
    DEFAULT_MAX_REPLY_BYTES,
    OPTNEG_REPLY_LIMIT,
    check_modification,
    check_reply_bytes,
)
from milterkit.decision import Decision
from milterkit.mtaprofile import POSTFIX, MTAProfile
from milterkit.protocol.constants import (
    REPLY_ACTION,
    STAGE_LETTER,
    Action,
    Command,
    Family,
    ProtocolFlag,
    Reply,
)
from milterkit.protocol.errors import LocalProtocolError, RemoteProtocolError
from milterkit.protocol.events import NEED_DATA, ConnectionClosed
from milterkit.protocol.macros import macro_key
from milterkit.protocol.messages import (
    Abort,
    Connect,
    Data,
    EndOfHeaders,
    EndOfMessage,
    Header,
    Helo,
    Macro,
    Mail,
    Message,
    Progress,
    Quarantine,
    Quit,
    Rcpt,
    ReplaceBody,
    ReplyCodePacket,
)
from milterkit.protocol.mta import MTAConnection
from milterkit.protocol.negotiate import Negotiated
from milterkit.protocol.text import text, wire
from milterkit.result import (
    CheckResult,
    MessageInput,
    ParsedMessage,
    SmtpReply,
    StageResult,
    bare_address,
    envelope_from_headers,
)

__all__ = ["ClientInfo", "Exchange", "MTASession", "MessageRun", "Opening", "decision_of"]

_DECISIONS = {
    Reply.CONTINUE: Decision.CONTINUE,
    Reply.ACCEPT: Decision.ACCEPT,
    Reply.REJECT: Decision.REJECT,
    Reply.TEMPFAIL: Decision.TEMPFAIL,
    Reply.DISCARD: Decision.DISCARD,
    Reply.SKIP: Decision.SKIP,
    Reply.SHUTDOWN: Decision.SHUTDOWN,
}
_LETTER_OF_STAGE = {int(k): chr(v) for k, v in STAGE_LETTER.items()}
_Script = Generator[bytes, Message, None]
#: A decision that ends the SMTP session: (decision, reply, stage).
Verdict = tuple[Decision, SmtpReply | None, str]
_Ask = Generator[bytes, Message, Message | None]


def decision_of(reply: Message) -> Decision:
    """The decision a final reply makes; a REPLYCODE is a reject or tempfail by class."""
    if isinstance(reply, ReplyCodePacket):
        return Decision.TEMPFAIL if reply.text.startswith(b"4") else Decision.REJECT
    decision = _DECISIONS.get(Reply(reply.code))
    if decision is None:
        raise RemoteProtocolError(
            f"filter sent {Reply(reply.code).name}, which no MTA accepts as a reply"
        )
    return decision


@dataclass(frozen=True)
class ClientInfo:
    """The SMTP client the MTA pretends to serve.

    ``address`` is an IPv4/IPv6 literal, a UNIX socket path (starting with
    ``/``), or None/"" for an unknown family ('U'). ``hostname`` is the
    verified client name; None means lookups failed or were off, so the MTA
    sends ``[address]`` and ``_`` says ``unknown``.
    """

    address: str | None = "127.0.0.1"
    port: int = 50000
    hostname: str | None = None
    helo: str = "client.example.org"


class MTASession:
    """One filter connection as an MTA sees it (see the module docstring).

    ``version``/``actions``/``protocol`` override the profile's offer.
    ``macros`` overrides macro values by name (``"j"``, ``"{auth_authen}"``;
    an empty value suppresses the macro). A name that is in none of the
    profile's stage lists is sent with CONNECT; ``"M:{name}"`` sends it with
    the given stage letter instead. Macros the filter requests in its OPTNEG
    reply are sent at their stage when they have a value.

    ``max_modifications`` and ``max_reply_bytes`` bound what the filter may
    send per message (None: no bound); reply packets may not exceed the
    negotiated data size (see :mod:`milterkit.client.limits`).
    """

    def __init__(
        self,
        profile: MTAProfile = POSTFIX,
        *,
        client: ClientInfo | None = None,
        version: int | None = None,
        actions: int | None = None,
        protocol: int | None = None,
        macros: Mapping[str, str] | None = None,
        connection: MTAConnection | None = None,
        max_modifications: int | None = DEFAULT_MAX_MODIFICATIONS,
        max_reply_bytes: int | None = DEFAULT_MAX_REPLY_BYTES,
    ) -> None:
        self.profile = profile
        self.max_modifications = max_modifications
        self.max_reply_bytes = max_reply_bytes
        self.client = client or ClientInfo()
        if connection is None:
            connection = MTAConnection(keep_unoffered_protocol=profile.keeps_unoffered_protocol)
            connection.cap_reply_size(OPTNEG_REPLY_LIMIT)
        self.conn = connection
        # Action/ProtocolFlag, not the ints callers may pass: the compiled build
        # checks argument types at run time
        self.offer = MTAConnection.default_offer(
            profile.version if version is None else version,
            Action(profile.actions if actions is None else actions),
            ProtocolFlag(profile.protocol if protocol is None else protocol),
        )
        self._overrides, self._extra = _parse_overrides(profile, macros or {})
        self.context = self._connection_context()
        self.opened = False
        self._opening: Opening | None = None
        self._latest: Exchange | None = None  # the last exchange handed out
        self._verdict: Verdict | None = None
        self._filter_skipped = False
        self._carry = b""  # a finished exchange's trailing bytes, not yet returned

    # --------------------------------------------------------------- exchanges

    def opening(self) -> Opening:
        """OPTNEG, CONNECT and HELO."""
        if self.opened:
            raise LocalProtocolError("the session is already open")
        self.opened = True
        self._opening = Opening(self)
        self._latest = self._opening
        return self._opening

    def message(
        self,
        message: MessageInput,
        sender: str | None = None,
        recipients: Sequence[str] | None = None,
        *,
        sender_args: Sequence[str] = (),
        recipient_args: Mapping[str, Sequence[str]] | None = None,
    ) -> MessageRun:
        """One message from MAIL to the end-of-message reply.

        Sender and recipients default to the message's From and To/Cc headers.
        """
        if not self.opened:
            raise LocalProtocolError("run session.opening() before the first message")
        self._settle()
        if self._latest is not None:
            raise LocalProtocolError(f"the previous {type(self._latest).__name__} is not done")
        if sender is None or recipients is None:
            header_sender, header_rcpts = envelope_from_headers(ParsedMessage.parse(message))
            sender = header_sender if sender is None else sender
            recipients = header_rcpts if recipients is None else recipients
        run = MessageRun(self, message, sender, recipients, sender_args, recipient_args or {})
        self._latest = run
        return run

    def abort(self) -> bytes:
        """Trailing packets plus ABORT, e.g. for an SMTP RSET; no reply follows."""
        self._settle(abandon=True)
        return self._take_carry() + self.send(Abort())

    def quit(self) -> bytes:
        """Trailing packets plus QUIT (Postfix adds its session-end ABORT first)."""
        self._settle(abandon=True)
        out = self._take_carry()
        if self._verdict is not None and not self.profile.quit_after_session_verdict:
            return out
        if self.profile.abort_after_message:
            out += self.send(Abort())
        return out + self.send(Quit())

    @property
    def negotiated(self) -> Negotiated | None:
        return self.conn.negotiated

    @property
    def verdict(self) -> Verdict | None:
        """Set once CONNECT/HELO (or a 421, SHUTDOWN or MTA error) ended the SMTP session."""
        self._settle()
        return self._verdict

    @property
    def filter_skipped(self) -> bool:
        """Sendmail after SKIP at RCPT: the filter gets nothing more but QUIT."""
        self._settle()
        return self._filter_skipped

    @property
    def opening_stages(self) -> list[StageResult]:
        """What the filter answered to CONNECT and HELO (a copy)."""
        return [] if self._opening is None else list(self._opening.stages)

    def _settle(self, abandon: bool = False) -> None:
        """Take in the last exchange once it is done (or given up on, for ABORT/QUIT)."""
        latest = self._latest
        if latest is None or not (latest.done or abandon):
            return
        self._latest = None
        self._verdict = self._verdict or latest.verdict
        self._filter_skipped = self._filter_skipped or latest.filter_skipped
        self._carry += latest.trailing

    def _take_carry(self) -> bytes:
        carry, self._carry = self._carry, b""
        return carry

    # ----------------------------------------------------------------- sending

    def send(self, message: Message) -> bytes:
        """Bytes for a command; ``b""`` when the filter asked not to get it."""
        return self.conn.send(message)

    def macros_for(self, letter: str, context: Mapping[str, str]) -> bytes:
        """The MACRO packet for a stage letter, or ``b""`` if the MTA sends none."""
        names = self._stage_names(letter)
        if names is None:
            return b""
        pairs = []
        for name in names:
            value = self._value(name, context)
            if value:
                pairs.append((wire(name), wire(value)))
        return self.send(Macro(ord(letter), tuple(pairs)))

    def _stage_names(self, letter: str) -> list[str] | None:
        base = letter
        if letter in ("L", "B"):
            if not self.profile.header_body_macros:
                return None
            base = "N" if letter == "L" else "E"
        names = self._requested(base)
        if base == "E" and self.profile.eom_list_follows_eoh:
            # Sendmail tests the EOH list's flag for the EOM list: without an EOH
            # list the default goes out; with one but no EOM list, no packet
            if self._requested("N") is None:
                names = None
            elif names is None:
                return None
        if names is None:
            configured = self.profile.macros.get(base)
            names = None if configured is None else list(configured)
        extra = self._extra.get(base, [])
        if names is None:
            return extra or None
        return names + [n for n in extra if n not in names]

    def _requested(self, letter: str) -> list[str] | None:
        """The filter's own list for this stage (OPTNEG macro lists), if it sent one."""
        negotiated = self.conn.negotiated
        if negotiated is None:
            return None
        for stage_id, names in negotiated.macros.items():
            if _LETTER_OF_STAGE.get(stage_id) != letter:
                continue
            if names or self.profile.empty_macro_list_disables:
                # bytes as they came (a name with non-ASCII bytes must not crash us)
                return [n.decode("ascii", "surrogateescape") for n in names]
        return None

    def _value(self, name: str, context: Mapping[str, str]) -> str:
        override = self._overrides.get(macro_key(name))
        if override is not None:
            return override
        template = self.profile.template_for(name)
        if template is None:
            template = self.profile.template_for(_other_spelling(name)) or ""
        return string.Template(template).substitute(_Context(context))

    # ----------------------------------------------------------------- context

    def _connection_context(self) -> dict[str, str]:
        profile, client = self.profile, self.client
        address = client.address or ""
        port = str(client.port)
        name = client.hostname or "unknown"
        if profile.nonsmtp is not None:
            address, port, name = profile.nonsmtp.address, str(profile.nonsmtp.port), "localhost"
        return {
            "mta_hostname": profile.hostname,
            "mta_version": profile.mta_version,
            "daemon_name": profile.daemon_name,
            "daemon_addr": profile.daemon_addr,
            "daemon_port": profile.daemon_port,
            "client_addr": address,
            "client_port": port,
            "client_name": name,
            "client_hostname": self.connect_message().hostname.decode("utf-8", "replace"),
            "client_ident": f"{name} [{address}]" if address else name,
            "helo": self.helo_name(),
        }

    def connect_message(self) -> Connect:
        """CONNECT as the profile's MTA would send it for :attr:`client`."""
        fake = self.profile.nonsmtp
        if fake is not None:
            return Connect(fake.hostname.encode(), fake.family, fake.port, fake.address.encode())
        client = self.client
        address = client.address
        if not address:
            return Connect(wire(client.hostname or "localhost"), Family.UNKNOWN)
        if address.startswith("/"):
            return Connect(wire(client.hostname or "localhost"), Family.UNIX, 0, wire(address))
        ip = ipaddress.ip_address(address)
        family = Family.INET if ip.version == 4 else Family.INET6
        text = address if ip.version == 4 else self.profile.ipv6_prefix + address
        hostname = client.hostname or f"[{text}]"
        return Connect(wire(hostname), family, client.port, wire(text))

    def helo_name(self) -> str:
        fake = self.profile.nonsmtp
        return fake.helo if fake is not None else self.client.helo

    def new_queue_id(self) -> str:
        """A Postfix-looking queue id (11 hex digits); override with macro ``i``."""
        return f"{random.getrandbits(44):011X}"


def _other_spelling(name: str) -> str:
    return name[1:-1] if name.startswith("{") and name.endswith("}") else "{" + name + "}"


class _Context(dict[str, str]):
    """Template variables; unknown ones expand to "" (the macro is then omitted)."""

    def __missing__(self, key: str) -> str:
        return ""


def _parse_overrides(
    profile: MTAProfile, macros: Mapping[str, str]
) -> tuple[dict[bytes, str], dict[str, list[str]]]:
    overrides: dict[bytes, str] = {}
    extra: dict[str, list[str]] = {}
    for key, value in macros.items():
        letter, sep, name = key.partition(":")
        if not (sep and len(letter) == 1 and letter.isupper()):
            letter, name = "", key
        overrides[macro_key(name)] = value
        listed = any(
            macro_key(n) == macro_key(name) for stage in profile.macros.values() for n in stage
        )
        if letter or not listed:
            extra.setdefault(letter or "C", []).append(name)
    return overrides, extra


# ------------------------------------------------------------------- exchanges


class Exchange(ABC):
    """Base of the sans-I/O exchanges: a script of commands, paused at each reply."""

    def __init__(self, session: MTASession) -> None:
        self.session = session
        self.done = False
        self.stage = ""
        self.detail = ""
        #: Bytes received from the filter during this exchange (see max_reply_bytes).
        self.received = 0
        #: Packets that need no reply, for the session to send before the next command.
        self.trailing = b""
        #: A decision of this exchange that ends the whole SMTP session.
        self.verdict: Verdict | None = None
        #: Sendmail after SKIP at RCPT: the filter gets nothing more but QUIT.
        self.filter_skipped = False
        self._out: list[bytes] = []
        self._script: _Script | None = None

    def start(self) -> bytes:
        """Bytes to send first (the previous exchange's trailing packets lead)."""
        if self._script is not None:
            raise LocalProtocolError("exchange already started")
        carry = self.session._take_carry()
        if carry:
            self._out.append(carry)
        self._script = self._run()
        return self._resume(None)

    def receive_data(self, data: bytes) -> bytes:
        """Feed the filter's bytes (``b""`` = it closed); return bytes to send next."""
        if self.done or self._script is None:
            raise LocalProtocolError("exchange is not waiting for the filter")
        conn = self.session.conn
        self.received += len(data)
        check_reply_bytes(self.received, self.session.max_reply_bytes)
        conn.receive_data(data)
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                return b""
            if isinstance(event, ConnectionClosed):
                raise RemoteProtocolError(f"filter closed the connection during {self.stage}")
            assert isinstance(event, Message)
            if isinstance(event, Progress):
                continue
            if Reply(event.code) in REPLY_ACTION:
                if self._modification(event):
                    continue
                return self._give_up()
            return self._resume(event)

    def _give_up(self) -> bytes:
        """The MTA drops the filter mid-reply (Postfix: a configuration error)."""
        assert self._script is not None
        self._script.close()
        self._finish_script()
        return b""

    def _resume(self, reply: Message | None) -> bytes:
        assert self._script is not None
        try:
            return self._script.send(reply)  # type: ignore[arg-type]
        except StopIteration:
            self._finish_script()
            return b""

    def _finish_script(self) -> None:
        """Done: what is still unsent needs no reply and goes out lazily."""
        self.done = True
        self.trailing = self._take()

    def _send(self, message: Message) -> bool:
        """Add a command to the outgoing bytes; False when the filter asked not to get it."""
        data = self.session.send(message)
        if data:
            self._out.append(data)
        return bool(data)

    def _send_macros(self, letter: str, context: Mapping[str, str]) -> None:
        data = self.session.macros_for(letter, context)
        if data:
            self._out.append(data)

    def _take(self) -> bytes:
        data = b"".join(self._out)
        self._out.clear()
        return data

    @abstractmethod
    def _run(self) -> _Script:
        """The exchange's commands, as a generator paused at each awaited reply."""

    def _modification(self, message: Message) -> bool:
        """Take a modification; False when the MTA gives up on the filter."""
        raise RemoteProtocolError(f"modification {Reply(message.code).name} outside a message")

    @abstractmethod
    def _record(self, stage: str, decision: Decision, reply: Message | None, detail: str) -> None:
        """Keep the filter's answer at one step."""

    def _ask(self, message: Message, stage: str, detail: str = "") -> _Ask:
        """Add a command; if it needs a reply, yield everything so far and wait for it."""
        if not self._send(message):
            return None
        if self.session.conn.awaiting is None:
            self._record(stage, Decision.NOREPLY, None, detail)
            return None
        self.stage, self.detail = stage, detail
        reply = yield self._take()
        if stage != "optneg":
            self._record(stage, decision_of(reply), reply, detail)
        return reply


def _smtp_reply(reply: Message | None) -> SmtpReply | None:
    """The reply the SMTP client sees: Postfix turns '%%' into '%' and drops a lone '%'."""
    if isinstance(reply, ReplyCodePacket):
        shown = text(reply.text)
        return SmtpReply.parse(_PERCENT.sub(lambda m: "%" if m.group() == "%%" else "", shown))
    return None


_PERCENT = re.compile(r"%%?")


class Opening(Exchange):
    """OPTNEG, then CONNECT and HELO with their macros.

    A final reply other than continue at CONNECT or HELO ends the session for
    every message (PROTOCOL.md section 6.7); it is this exchange's
    :attr:`verdict`, becomes :attr:`MTASession.verdict` and shows up in each
    message's result.
    """

    def __init__(self, session: MTASession) -> None:
        super().__init__(session)
        #: The filter's answers to CONNECT and HELO.
        self.stages: list[StageResult] = []

    def _run(self) -> _Script:
        session = self.session
        yield from self._ask(session.offer, "optneg")
        assert session.conn.negotiated is not None
        session.conn.cap_reply_size(session.conn.negotiated.max_data_size)
        ctx = session.context
        self._send_macros("C", ctx)
        connect = session.connect_message()
        reply = yield from self._ask(
            connect, "connect", connect.hostname.decode("utf-8", "replace")
        )
        if self._ends_session(reply, "connect"):
            return
        self._send_macros("H", ctx)
        helo = session.helo_name()
        reply = yield from self._ask(Helo(wire(helo)), "helo", helo)
        self._ends_session(reply, "helo")

    def _record(self, stage: str, decision: Decision, reply: Message | None, detail: str) -> None:
        self.stages.append(StageResult(stage, decision, _smtp_reply(reply), detail))

    def _ends_session(self, reply: Message | None, stage: str) -> bool:
        if reply is None:
            return False
        decision = decision_of(reply)
        if decision in (Decision.CONTINUE, Decision.SKIP):
            return False
        if decision == Decision.SHUTDOWN:
            decision = Decision.TEMPFAIL
        self.verdict = (decision, _smtp_reply(reply), stage)
        return True


class MessageRun(Exchange):
    """One message through the filter, building a :class:`CheckResult`.

    The steps follow a real MTA: MAIL, each RCPT, DATA, every header, EOH,
    the body in chunks of the negotiated size, EOM, each preceded by the
    profile's MACRO packet. A final reply that ends the message (reject at
    MAIL, accept at RCPT, ...) stops sending the rest, as an MTA would; a
    reject or tempfail at RCPT only drops that recipient. SKIP at RCPT,
    header or body skips the remaining commands of that kind.
    """

    def __init__(
        self,
        session: MTASession,
        message: MessageInput,
        sender: str,
        recipients: Sequence[str],
        sender_args: Sequence[str],
        recipient_args: Mapping[str, Sequence[str]],
    ) -> None:
        super().__init__(session)
        if not recipients:
            raise ValueError("a message needs at least one recipient")
        self.parsed = ParsedMessage.parse(message)
        self.sender = sender
        self.recipients = list(recipients)
        self.sender_args = tuple(sender_args)
        self.recipient_args = recipient_args
        self.result = CheckResult(
            negotiated=session.negotiated,
            profile=session.profile.name,
            header_edits=session.profile.header_edits,
            header_defaults=session.profile.header_defaults,
            mailer_flags=session.profile.mailer_flags,
            stages=list(session.opening_stages),
            sender=sender,
            sender_args=self.sender_args,
            recipients=list(recipients),
        )
        self.context = dict(session.context)
        self._body_run = ""  # "open" while REPLBODY packets come, "over" after
        self._skip_body = False

    # ----------------------------------------------------------------- script

    def _run(self) -> _Script:
        session = self.session
        if session.verdict is not None:
            self._session_verdict()
            return
        if session.filter_skipped:
            return  # Sendmail after SKIP at RCPT: the message passes untouched
        self._start_context()
        yield from self._message()
        if session.profile.abort_after_message:
            self._send(Abort())  # Sendmail sends none, even after a message that ended early

    def _message(self) -> _Script:
        if not (yield from self._mail()):
            return
        if not (yield from self._rcpts()):
            return
        if not (yield from self._step("T", Data(), "data")):
            return
        if not (yield from self._headers()):
            return
        if not (yield from self._step("N", EndOfHeaders(), "eoh")):
            return
        if not (yield from self._body()):
            return
        yield from self._step("E", EndOfMessage(), "eom")

    def _mail(self) -> Generator[bytes, Message, bool]:
        mail = Mail(wire(self._envelope(self.sender, null_ok=True)), _encs(self.sender_args))
        return (yield from self._step("M", mail, "mail", self.sender))

    def _rcpts(self) -> Generator[bytes, Message, bool]:
        skipping = accepted = False
        for rcpt in self.recipients:
            address = bare_address(rcpt)
            self.context.update(rcpt_addr=address, rcpt_host=_domain(address))
            if skipping:
                accepted = True
                continue
            self._send_macros("R", self.context)
            args = _encs(self.recipient_args.get(rcpt, ()))
            reply = yield from self._ask(Rcpt(wire(self._envelope(rcpt)), args), "rcpt", rcpt)
            if reply is not None and not self._verdict(reply, "rcpt", rcpt):
                return False
            if reply is None or decision_of(reply) in (Decision.CONTINUE, Decision.SKIP):
                accepted = True
                self._first_accepted_rcpt()
            skipping = reply is not None and decision_of(reply) == Decision.SKIP
            if skipping and self.session.profile.skip_rcpt_ends_session:
                self.filter_skipped = True
                return False
        return accepted or self._all_rcpts_rejected()

    def _headers(self) -> Generator[bytes, Message, bool]:
        leadspc = bool(self._protocol() & ProtocolFlag.HDR_LEADSPC)
        sends = self.session.conn.sends(Command.HEADER)
        for raw in self.parsed.headers:
            if sends:
                self._send_macros("L", self.context)
            header = Header(raw.name, raw.value(leadspc))
            reply = yield from self._ask(header, "header", raw.name.decode("ascii", "replace"))
            if reply is None:
                continue
            if not self._verdict(reply, "header", ""):
                return False
            if decision_of(reply) == Decision.SKIP:
                if not self.session.profile.skip_header_skips_body:
                    break
                self._skip_body = True  # Sendmail: all headers, then no body
        return True

    def _body(self) -> Generator[bytes, Message, bool]:
        if self._skip_body:
            self.result.skipped_body = True
            return True
        conn = self.session.conn
        sends = conn.sends(Command.BODY)
        for chunk in conn.body_chunks(self.parsed.smtp_body()):
            if sends:
                self._send_macros("B", self.context)
            reply = yield from self._ask(chunk, "body", f"{len(chunk.chunk)} bytes")
            if reply is None:
                continue
            if not self._verdict(reply, "body", ""):
                return False
            if decision_of(reply) == Decision.SKIP:
                self.result.skipped_body = True
                break
        return True

    def _step(
        self, letter: str, command: Message, stage: str, detail: str = ""
    ) -> Generator[bytes, Message, bool]:
        """Macros, the command, and the verdict on its reply (True: go on).

        Both MTAs send a stage's macros even when the filter turned the command
        off, except for EOH: under NOEOH there is no EOH event, macros included.
        """
        if letter != "N" or self.session.conn.sends(Command.EOH):
            self._send_macros(letter, self.context)
        reply = yield from self._ask(command, stage, detail)
        if reply is None:
            return True
        if stage == "eom":
            self._finish(decision_of(reply), reply, stage)
            return False
        return self._verdict(reply, stage, detail)

    # -------------------------------------------------------------- verdicts

    def _record(self, stage: str, decision: Decision, reply: Message | None, detail: str) -> None:
        self.result.stages.append(StageResult(stage, decision, _smtp_reply(reply), detail))

    def _verdict(self, reply: Message, stage: str, detail: str) -> bool:
        """Whether the message goes on after this reply."""
        decision = decision_of(reply)
        if decision in (Decision.CONTINUE, Decision.SKIP):
            return True
        if (
            stage == "rcpt"
            and decision in (Decision.REJECT, Decision.TEMPFAIL)
            and not _is_421(reply)
        ):
            self.result.rejected_recipients[detail] = self._reply_for(decision, reply)
            return True
        self._finish(decision, reply, stage)
        return False

    def _finish(self, decision: Decision, reply: Message | None, stage: str) -> None:
        """The message's final word; 421 (or SHUTDOWN) also ends the SMTP session."""
        result = self.result
        if decision in (Decision.REJECT, Decision.TEMPFAIL, Decision.SHUTDOWN):
            result.default_reply = self._reply_for(decision, reply)
        if decision == Decision.SHUTDOWN or _is_421(reply):
            self.verdict = (Decision.TEMPFAIL, self._reply_for(decision, reply), stage)
            decision = Decision.TEMPFAIL
        result.decision, result.decided_at = decision, stage
        result.reply = _smtp_reply(reply)

    def _reply_for(self, decision: Decision, reply: Message | None) -> SmtpReply:
        explicit = _smtp_reply(reply)
        if explicit is not None:
            return explicit
        profile = self.session.profile
        text = {
            Decision.REJECT: profile.reject_reply,
            Decision.SHUTDOWN: profile.shutdown_reply,
        }.get(decision, profile.tempfail_reply)
        return SmtpReply.parse(text)

    def _all_rcpts_rejected(self) -> bool:
        """Every recipient refused: the transaction is over before DATA."""
        rejected = self.result.rejected_recipients
        decision = (
            Decision.TEMPFAIL
            if any(r.code // 100 == 4 for r in rejected.values())
            else Decision.REJECT
        )
        last = list(rejected.values())[-1]
        result = self.result
        result.decision, result.decided_at, result.default_reply = decision, "rcpt", last
        return False

    def _session_verdict(self) -> None:
        """CONNECT/HELO already decided for the whole session: no packet is sent."""
        assert self.session.verdict is not None
        decision, reply, stage = self.session.verdict
        result = self.result
        result.decision, result.decided_at, result.reply = decision, stage, reply
        if decision in (Decision.REJECT, Decision.TEMPFAIL):
            result.default_reply = reply or self._reply_for(decision, None)

    def _modification(self, message: Message) -> bool:
        count = len(self.result.modifications) + 1
        check_modification(message, count, self.session.max_modifications)
        if not self._body_order_ok(message):
            self._configuration_error(
                "body replacement requests can't currently be mixed with other requests"
            )
            return False
        self.result.modifications.append(message)
        if isinstance(message, Quarantine):
            self.result.quarantine_reason = text(message.reason)
        return True

    def _body_order_ok(self, message: Message) -> bool:
        """Postfix takes REPLBODY packets only as one run: none after another reply."""
        if isinstance(message, ReplaceBody):
            if self._body_run == "over" and self.session.profile.body_replacement_lockout:
                return False
            self._body_run = "open"
        elif self._body_run == "open":
            self._body_run = "over"
        return True

    def _configuration_error(self, why: str) -> None:
        """Postfix closes the filter and answers with its configuration-error reply."""
        reply = SmtpReply.parse(self.session.profile.config_error_reply)
        self.result.stages.append(StageResult("eom", Decision.TEMPFAIL, reply, f"MTA: {why}"))
        self.result.decision, self.result.decided_at = Decision.TEMPFAIL, "eom"
        self.result.default_reply = reply
        self.verdict = (Decision.TEMPFAIL, reply, "eom")

    # ---------------------------------------------------------------- helpers

    def _protocol(self) -> ProtocolFlag:
        negotiated = self.session.negotiated
        return negotiated.protocol if negotiated else ProtocolFlag.NONE

    def _envelope(self, address: str, null_ok: bool = False) -> str:
        """SMTP puts addresses in ``<>``; Postfix's non-SMTP path sends them bare."""
        bare = bare_address(address)
        if self.session.profile.nonsmtp is not None:
            return bare
        return f"<{bare}>" if bare or null_ok else "<>"

    def _start_context(self) -> None:
        sender = bare_address(self.sender)
        msg_id = self.parsed.get("Message-ID")
        self.context.update(
            mail_addr=sender,
            mail_host=_domain(sender),
            msg_id=msg_id.decode("utf-8", "replace").strip() if msg_id else "",
            queue_id="",
        )
        self._queue_id = self.session.new_queue_id()
        if self.session.profile.queue_id_at_mail:
            self.context["queue_id"] = self._queue_id

    def _first_accepted_rcpt(self) -> None:
        self.context["queue_id"] = self._queue_id


def _is_421(reply: Message | None) -> bool:
    """A 421 reply: both MTAs answer it and drop the SMTP connection."""
    return isinstance(reply, ReplyCodePacket) and reply.smtp_code == 421


def _domain(address: str) -> str:
    return address.rpartition("@")[2] if "@" in address else ""


def _encs(values: Sequence[str]) -> tuple[bytes, ...]:
    return tuple(wire(v) for v in values)
