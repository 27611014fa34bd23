"""libMilterPHP compatibility: port a PHP milter almost line by line.

A libMilterPHP milter extends ``\\libMilterPHP\\Milter``, defines ``smfic*``
callbacks that each receive a message array and answer with
``$this->reply(array('command' => SMFIR_..., 'data' => array(...)))``, and
calls ``acceptConnections()``. Here the same program reads::

    class MilterTestDaemon(Milter):
        def smficMail(self, message):
            if re.search(r"spameri@tiscali\\.it", message["args"][0], re.I):
                self.reply({"command": SMFIR_QUARANTINE, "data": {"reason": "Spam"}})
            self.reply({"command": SMFIR_CONTINUE, "data": {}})

    MilterTestDaemon("postfix", "mail", "/run/d.pid", 1024, "unix:/run/d.sock",
                     [SMFIF_QUARANTINE], [SMFIP_NOBODY]).accept_connections()

Underneath it is a generated :class:`milterkit.milter.Milter` subclass
served by milterkit's daemon, with these deliberate differences:

* **Modifications are queued.** The wire allows them only at end of message,
  so a QUARANTINE (or any header/recipient/body change) replied at MAIL is
  kept and sent at end of message, before the final reply. libMilterPHP
  would put it on the wire at once, which Sendmail refuses as a bogus reply.
* **One final reply per command.** The first accept/continue/reject/tempfail/
  discard/replycode/skip a callback replies is the decision; later ones are
  dropped (the sample replies CONTINUE twice). A callback that replies no
  final decision gets CONTINUE; ``smficAbort``, ``smficMacro`` and
  ``smficQuit`` get no reply at all, as in the protocol.
* **One object per connection.** libMilterPHP forks a child per connection;
  milterkit makes a shallow copy of your object per connection instead, so
  attributes set in a callback never leak into another connection. Mutable
  containers created in ``__init__`` are shared: create per-connection ones in
  ``smficConnect`` (or the first callback you get).
* **Protocol version 2 by default**, like libMilterPHP. Set the class
  attribute ``protocol_version = 6`` to get DATA/UNKNOWN, CHGFROM and
  ADDRCPT_PAR.

Message arrays (dicts) have the keys ``size`` (the packet's length field:
command byte plus payload), ``command`` (the one-character command),
``binary`` (the raw payload as bytes) and ``args`` (the payload decoded to
strings, UTF-8 with surrogateescape so odd bytes survive a round trip):

==========  ====================================================================
command     ``args``
==========  ====================================================================
C connect   ``[hostname, family, port, address]``; family is ``'4' '6' 'L' 'U'``;
            for ``'U'`` only ``[hostname, 'U']``
H helo      ``[helo name]``
M mail      ``[sender, esmtp arg, ...]`` (sender as the MTA sent it, e.g. ``<a@b>``)
R rcpt      ``[recipient, esmtp arg, ...]``
L header    ``[name, value]``
B body      ``[chunk]`` (the raw chunk is in ``binary``)
D macro     ``[stage letter, name, value, name, value, ...]``; also ``macros``:
            a dict name -> value
T, N, E,    ``[]`` (E may carry a last body chunk in ``binary``)
U unknown   ``[command line]``
A, Q        ``[]``
==========  ====================================================================
"""

from __future__ import annotations

import copy
import inspect
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from milterkit import milter as mk
from milterkit._deprecation import warn_renamed
from milterkit.protocol import messages as msg
from milterkit.protocol.constants import (
    ALL_ACTIONS,
    ALL_PROTOCOL,
    CHUNK_SIZE,
    OPTNEG_LEN,
    V1_ACTIONS,
    V1_PROTOCOL,
    V2_ACTIONS,
    V2_PROTOCOL,
    Action,
    Family,
    ProtocolFlag,
)
from milterkit.protocol.errors import LocalProtocolError
from milterkit.protocol.names import (
    SMFIF_ADDHDRS as SMFIF_ADDHDRS,
)
from milterkit.protocol.names import (
    SMFIF_ADDRCPT as SMFIF_ADDRCPT,
)
from milterkit.protocol.names import (
    SMFIF_ADDRCPT_PAR as SMFIF_ADDRCPT_PAR,
)
from milterkit.protocol.names import (
    SMFIF_CHGBODY as SMFIF_CHGBODY,
)
from milterkit.protocol.names import (
    SMFIF_CHGFROM as SMFIF_CHGFROM,
)
from milterkit.protocol.names import (
    SMFIF_CHGHDRS as SMFIF_CHGHDRS,
)
from milterkit.protocol.names import (
    SMFIF_DELRCPT as SMFIF_DELRCPT,
)
from milterkit.protocol.names import (
    SMFIF_MODBODY as SMFIF_MODBODY,
)

# Action and protocol flags: the very IntFlag members of the native API (protocol.names).
from milterkit.protocol.names import (
    SMFIF_NONE as SMFIF_NONE,
)
from milterkit.protocol.names import (
    SMFIF_QUARANTINE as SMFIF_QUARANTINE,
)
from milterkit.protocol.names import (
    SMFIF_SETSYMLIST as SMFIF_SETSYMLIST,
)
from milterkit.protocol.names import (
    SMFIP_HDR_LEADSPC as SMFIP_HDR_LEADSPC,
)
from milterkit.protocol.names import (
    SMFIP_NOBODY as SMFIP_NOBODY,
)
from milterkit.protocol.names import (
    SMFIP_NOCONNECT as SMFIP_NOCONNECT,
)
from milterkit.protocol.names import (
    SMFIP_NODATA as SMFIP_NODATA,
)
from milterkit.protocol.names import (
    SMFIP_NOEOH as SMFIP_NOEOH,
)
from milterkit.protocol.names import (
    SMFIP_NOHDRS as SMFIP_NOHDRS,
)
from milterkit.protocol.names import (
    SMFIP_NOHELO as SMFIP_NOHELO,
)
from milterkit.protocol.names import (
    SMFIP_NOHREPL as SMFIP_NOHREPL,
)
from milterkit.protocol.names import (
    SMFIP_NOMAIL as SMFIP_NOMAIL,
)
from milterkit.protocol.names import (
    SMFIP_NORCPT as SMFIP_NORCPT,
)
from milterkit.protocol.names import (
    SMFIP_NOUNKNOWN as SMFIP_NOUNKNOWN,
)
from milterkit.protocol.names import (
    SMFIP_NR_BODY as SMFIP_NR_BODY,
)
from milterkit.protocol.names import (
    SMFIP_NR_CONN as SMFIP_NR_CONN,
)
from milterkit.protocol.names import (
    SMFIP_NR_DATA as SMFIP_NR_DATA,
)
from milterkit.protocol.names import (
    SMFIP_NR_EOH as SMFIP_NR_EOH,
)
from milterkit.protocol.names import (
    SMFIP_NR_HDR as SMFIP_NR_HDR,
)
from milterkit.protocol.names import (
    SMFIP_NR_HELO as SMFIP_NR_HELO,
)
from milterkit.protocol.names import (
    SMFIP_NR_MAIL as SMFIP_NR_MAIL,
)
from milterkit.protocol.names import (
    SMFIP_NR_RCPT as SMFIP_NR_RCPT,
)
from milterkit.protocol.names import (
    SMFIP_NR_UNKN as SMFIP_NR_UNKN,
)
from milterkit.protocol.names import (
    SMFIP_RCPT_REJ as SMFIP_RCPT_REJ,
)
from milterkit.protocol.names import (
    SMFIP_SKIP as SMFIP_SKIP,
)
from milterkit.protocol.negotiate import build_filter_reply
from milterkit.protocol.text import text, wire

__all__ = [
    "MessageArray",
    "Milter",
    "ReplyError",
    "adapter_class",
]

#: A libMilterPHP message array, as each ``smfic*`` callback receives it. It was
#: called ``Message``, which hid ``milterkit.protocol.Message`` (the packets); that
#: name still works, with a DeprecationWarning (module ``__getattr__`` at the end).
MessageArray = dict[str, Any]
_Final = mk.Response | msg.ReplyCodePacket
log = logging.getLogger("milterkit.compat")

# ----------------------------------------------------------------- constants
# Commands and replies are one-character strings, as in libMilterPHP; actions
# and protocol flags are ints (IntFlag members, usable with | and in lists).

SMFIC_ABORT = "A"
SMFIC_BODY = "B"
SMFIC_CONNECT = "C"
SMFIC_MACRO = "D"
SMFIC_BODYEOB = "E"
SMFIC_HELO = "H"
SMFIC_QUIT_NC = "K"
SMFIC_HEADER = "L"
SMFIC_MAIL = "M"
SMFIC_EOH = "N"
SMFIC_OPTNEG = "O"
SMFIC_QUIT = "Q"
SMFIC_RCPT = "R"
SMFIC_DATA = "T"
SMFIC_UNKNOWN = "U"

SMFIR_ADDRCPT = "+"
SMFIR_DELRCPT = "-"
SMFIR_ADDRCPT_PAR = "2"
SMFIR_SHUTDOWN = "4"
SMFIR_ACCEPT = "a"
SMFIR_REPLBODY = "b"
SMFIR_CONTINUE = "c"
SMFIR_DISCARD = "d"
SMFIR_CHGFROM = "e"
SMFIR_CONN_FAIL = "f"
SMFIR_ADDHEADER = "h"
SMFIR_INSHEADER = "i"
SMFIR_SETSYMLIST = "l"
SMFIR_CHGHEADER = "m"
SMFIR_PROGRESS = "p"
SMFIR_QUARANTINE = "q"
SMFIR_REJECT = "r"
SMFIR_SKIP = "s"
SMFIR_TEMPFAIL = "t"
SMFIR_REPLYCODE = "y"

SMFIA_UNKNOWN = "U"
SMFIA_UNIX = "L"
SMFIA_INET = "4"
SMFIA_INET6 = "6"

SMFI_V1_ACTS = V1_ACTIONS
SMFI_V2_ACTS = V2_ACTIONS
SMFI_CURR_ACTS = ALL_ACTIONS
SMFI_V1_PROT = V1_PROTOCOL
SMFI_V2_PROT = V2_PROTOCOL
SMFI_CURR_PROT = ALL_PROTOCOL
MILTER_LEN_BYTES = 4
MILTER_OPTLEN = OPTNEG_LEN
MILTER_CHUNK_SIZE = CHUNK_SIZE

_FINAL = {
    SMFIR_CONTINUE: msg.Continue(),
    SMFIR_ACCEPT: msg.Accept(),
    SMFIR_REJECT: msg.Reject(),
    SMFIR_TEMPFAIL: msg.TempFail(),
    SMFIR_DISCARD: msg.Discard(),
    SMFIR_SKIP: msg.Skip(),
}


class ReplyError(ValueError):
    """A reply array libMilterPHP would have sent but the protocol cannot carry."""


# ------------------------------------------------------------ the base class


class Milter:
    """libMilterPHP's ``\\libMilterPHP\\Milter``: override the ``smfic*`` callbacks.

    The seven constructor arguments are libMilterPHP's, in its order.
    ``user``/``group`` may be None (or "") to keep the current identity.
    ``process_limit`` becomes milterkit's ``max_connections``: libMilterPHP
    runs one process per MTA connection, milterkit serves them from a few
    worker processes, so the limit keeps its meaning of "concurrent
    connections".
    """

    protocol_version: ClassVar[int] = 2

    def __init__(
        self,
        user: str | int | None,
        group: str | int | None,
        pid_file: str | None,
        process_limit: int,
        connection_string: str,
        supported_actions: Iterable[int] = (),
        ignored_content: Iterable[int] = (),
    ) -> None:
        self.user = user or None
        self.group = group or None
        self.pid_file = pid_file or None
        self.process_limit = process_limit
        self.connection_string = connection_string
        self.supported_actions = list(supported_actions)
        self.ignored_content = list(ignored_content)
        self._replies: list[Mapping[str, Any]] | None = None
        self._adapter: mk.Milter | None = None

    # -- callbacks (libMilterPHP's names; all optional here) ---------------

    def smficAbort(self, message: MessageArray) -> None:  # noqa: N802
        """SMFIC_ABORT: the current message was abandoned; no reply."""

    def smficBody(self, message: MessageArray) -> None:  # noqa: N802
        """SMFIC_BODY: one body chunk."""

    def smficConnect(self, message: MessageArray) -> None:  # noqa: N802
        """SMFIC_CONNECT: client host name, family, port and address."""

    def smficMacro(self, message: MessageArray) -> None:  # noqa: N802
        """SMFIC_MACRO: macro values for the next command; no reply."""

    def smficBodyeob(self, message: MessageArray) -> None:  # noqa: N802
        """SMFIC_BODYEOB: end of message; modifications go out now."""

    def smficHelo(self, message: MessageArray) -> None:  # noqa: N802
        """SMFIC_HELO: the HELO/EHLO argument."""

    def smficHeader(self, message: MessageArray) -> None:  # noqa: N802
        """SMFIC_HEADER: one header, name and value."""

    def smficMail(self, message: MessageArray) -> None:  # noqa: N802
        """SMFIC_MAIL: the sender and ESMTP arguments."""

    def smficEoh(self, message: MessageArray) -> None:  # noqa: N802
        """SMFIC_EOH: end of headers."""

    def smficRcpt(self, message: MessageArray) -> None:  # noqa: N802
        """SMFIC_RCPT: one recipient and ESMTP arguments."""

    def smficData(self, message: MessageArray) -> None:  # noqa: N802
        """SMFIC_DATA (protocol 4+): the client sent DATA."""

    def smficUnknown(self, message: MessageArray) -> None:  # noqa: N802
        """SMFIC_UNKNOWN (protocol 3+): a command the MTA does not know."""

    def smficQuit(self, message: MessageArray) -> None:  # noqa: N802
        """SMFIC_QUIT: the connection ends; no reply."""

    # -- replying ------------------------------------------------------------

    def reply(self, reply: Mapping[str, Any]) -> None:
        """Queue ``{'command': SMFIR_..., 'data': {...}}``; applied when the callback returns.

        PROGRESS goes out at once (it only tells the MTA to keep waiting).
        """
        if self._replies is None:
            raise ReplyError("reply() called outside a smfic* callback")
        command = reply.get("command")
        if command == SMFIR_PROGRESS and self._adapter is not None:
            self._adapter.progress()
            return
        self._replies.append(reply)

    @property
    def log(self) -> logging.LoggerAdapter[logging.Logger] | logging.Logger:
        """The session's logger (lines carry the connection id)."""
        return self._adapter.log if self._adapter is not None else log

    # -- running -------------------------------------------------------------

    def accept_connections(self, **options: Any) -> int:
        """Run the daemon in the foreground (libMilterPHP's ``acceptConnections``).

        ``options`` go to :func:`milterkit.runtime.run` (``workers``, ``log``,
        ``log_level``, ``timeout``, ...); returns the exit status.
        """
        from milterkit.runtime.daemon import run

        return run(
            adapter_class(self),
            self.connection_string,
            user=self.user,
            group=self.group,
            pid_file=self.pid_file,
            max_connections=self.process_limit,
            **options,
        )

    acceptConnections = accept_connections  # noqa: N815


# --------------------------------------------------------------- the adapter


#: One MACRO packet as received: the stage letter and its (name, value) pairs.
_MacroPacket = tuple[int, tuple[tuple[bytes, bytes], ...]]


class _Adapter(mk.Milter):
    """milterkit Milter that calls a libMilterPHP-style object; see :func:`adapter_class`."""

    template: ClassVar[Milter]
    php_actions: ClassVar[Action]
    php_protocol: ClassVar[ProtocolFlag]

    def __init__(self) -> None:
        self.php = copy.copy(self.template)
        self.php._adapter = self
        self.php._replies = None
        #: The MACRO packets received since the last smfic* callback, oldest first.
        self._macro_packets: list[_MacroPacket] = []

    @property
    def macro_values(self) -> mk.MacroView:
        """As for any Milter; setting it also starts recording MACRO packets."""
        return self._macro_view

    @macro_values.setter
    def macro_values(self, view: mk.MacroView) -> None:
        """The session hands over the connection's macros: record each packet from now.

        libMilterPHP calls smficMacro once per MACRO packet, so the values in force
        are not enough. The store's observer sees every packet (after QUIT_NC too,
        where the new adapter's observer replaces the old one). It holds the list,
        not the adapter, so the store does not keep the adapter alive.
        """
        self._macro_view = view
        packets = self._macro_packets
        view.store.observer = lambda stage, pairs: packets.append((stage, pairs))

    def negotiate(self, offer: msg.OptNeg) -> msg.OptNeg | None:
        """Reply with exactly the given actions and ignored content, as libMilterPHP does."""
        return build_filter_reply(
            offer,
            version=self.template.protocol_version,
            actions=self.php_actions,
            protocol=self.php_protocol,
        )

    # -- milterkit callbacks -> smfic* ------------------------------------

    def connect(self, hostname: str, family: Family, address: str | None, port: int | None) -> Any:
        args = [hostname, chr(family)]
        if family != Family.UNKNOWN:
            args += [str(port), address or ""]
        return self._decide("smficConnect", args)

    def helo(self, name: str) -> Any:
        return self._decide("smficHelo", [name])

    def mail_from(self, sender: str, params: list[str]) -> Any:
        return self._decide("smficMail", [sender, *params])

    def rcpt_to(self, recipient: str, params: list[str]) -> Any:
        return self._decide("smficRcpt", [recipient, *params])

    def data(self) -> Any:
        return self._decide("smficData", [])

    def header(self, name: str, value: str) -> Any:
        return self._decide("smficHeader", [name, value])

    def end_of_headers(self) -> Any:
        return self._decide("smficEoh", [])

    def body(self, chunk: bytes) -> Any:
        return self._decide("smficBody", [text(chunk)])

    def end_of_message(self) -> Any:
        return self._decide("smficBodyeob", [])

    def unknown(self, command: str) -> Any:
        return self._decide("smficUnknown", [command])

    def abort(self) -> Any:
        return self._notify("smficAbort", _synthetic(SMFIC_ABORT))

    def close(self) -> Any:
        return self._notify("smficQuit", _synthetic(SMFIC_QUIT))

    # -- plumbing --------------------------------------------------------------

    def _message(self, args: list[str]) -> MessageArray:
        event = self.event
        if event is None:  # pragma: no cover - the session always sets it
            return _synthetic("?")
        payload = event.payload()
        return {
            "size": len(payload) + 1,
            "command": chr(event.code),
            "binary": payload,
            "args": args,
        }

    def _decide(self, name: str, args: list[str]) -> Any:
        self._report_macros()
        message = self._message(args)
        replies = self._collect(name, message)
        if inspect.isawaitable(replies):
            return self._decide_later(replies)
        return self._apply(name, replies)

    async def _decide_later(self, pending: Any) -> Any:
        name, replies = await pending
        return self._apply(name, replies)

    def _collect(self, name: str, message: MessageArray) -> Any:
        """Run one smfic* callback, gathering what it passed to reply()."""
        replies: list[Mapping[str, Any]] = []
        self.php._replies = replies
        try:
            result = getattr(self.php, name)(message)
        except BaseException:
            self.php._replies = None
            raise
        if inspect.isawaitable(result):
            return self._collect_later(name, result, replies)
        self.php._replies = None
        return replies

    async def _collect_later(
        self, name: str, awaitable: Any, replies: list[Mapping[str, Any]]
    ) -> tuple[str, list[Mapping[str, Any]]]:
        try:
            await awaitable
        finally:
            self.php._replies = None
        return name, replies

    def _apply(self, name: str, replies: list[Mapping[str, Any]]) -> _Final:
        decision: _Final | None = None
        for reply in replies:
            final = self._translate(reply)
            if final is None:
                continue
            if decision is None:
                decision = final
            else:
                self.log.debug("%s: extra final reply %r ignored", name, reply.get("command"))
        return decision if decision is not None else msg.Continue()

    def _translate(self, reply: Mapping[str, Any]) -> _Final | None:
        """A final reply becomes the decision; a modification is queued for EOM."""
        command = reply.get("command")
        data = reply.get("data") or {}
        if not isinstance(data, Mapping):
            raise ReplyError(f"reply {command!r}: 'data' must be a dict, not {type(data).__name__}")
        if command in _FINAL:
            return _FINAL[command]  # type: ignore[return-value]
        if command == SMFIR_REPLYCODE:
            return _reply_code(data)
        action = _MODIFICATIONS.get(command)  # type: ignore[arg-type]
        if action is None:
            raise ReplyError(f"unknown or unsupported reply command {command!r}")
        action(self, data)
        return None

    def _notify(self, name: str, message: MessageArray) -> Any:
        self._report_macros()
        replies = self._collect(name, message)
        if inspect.isawaitable(replies):
            return replies
        if replies:
            self.log.debug("%s: replies ignored (no reply is due here)", name)
        return None

    def _report_macros(self) -> None:
        """Call smficMacro once per MACRO packet received since the last callback."""
        packets = self._macro_packets
        if not packets:
            return
        received = packets.copy()
        packets.clear()  # cleared in place: the store's observer holds this list
        for stage, pairs in received:
            payload = msg.Macro(stage, pairs).payload()
            args = [chr(stage)]
            for name, value in pairs:
                args += [text(name), text(value)]
            message = {
                "size": len(payload) + 1,
                "command": SMFIC_MACRO,
                "binary": payload,
                "args": args,
                "macros": {text(n): text(v) for n, v in pairs},
            }
            if self._collect("smficMacro", message):
                self.log.debug("smficMacro: replies ignored (no reply is due here)")


def _synthetic(command: str) -> MessageArray:
    return {"size": 1, "command": command, "binary": b"", "args": []}


def _need(data: Mapping[str, Any], command: str, *keys: str) -> Any:
    """The first of ``keys`` present in ``data`` (aliases), or a clear error."""
    for key in keys:
        if key in data:
            return data[key]
    raise ReplyError(f"reply {command!r} needs data key {keys[0]!r}; got {sorted(data)}")


def _str(value: Any) -> str:
    return text(value) if isinstance(value, bytes) else str(value)


def _reply_code(data: Mapping[str, Any]) -> _Final:
    """REPLYCODE from {'code', 'text'[, 'xcode']} or a whole line {'text': '550 5.7.1 ...'}."""
    text = _str(data.get("text", data.get("message", "")))
    code = data.get("code", data.get("smtpcode", data.get("rcode")))
    if code is None:
        reply = msg.ReplyCodePacket(wire(text))
        problem = reply.problem()
        if problem:
            raise ReplyError(f"REPLYCODE text {text!r}: {problem}")
        return reply
    enhanced = data.get("xcode", data.get("enhanced"))
    try:
        return mk.ReplyCode(int(code), text, None if enhanced is None else _str(enhanced))
    except (ValueError, LocalProtocolError) as exc:
        raise ReplyError(f"REPLYCODE {code!r} {text!r}: {exc}") from exc


def _index(data: Mapping[str, Any], command: str) -> int:
    return int(_need(data, command, "index", "idx"))


_Modification = Callable[[_Adapter, Mapping[str, Any]], None]

_MODIFICATIONS: dict[str, _Modification] = {
    SMFIR_ADDHEADER: lambda a, d: a.add_header(
        _str(_need(d, "h", "name", "header")), _str(_need(d, "h", "value"))
    ),
    # libMilterPHP's reply arrays name their fields, so they need no order; the
    # calls below use milterkit's (name, value, index).
    SMFIR_INSHEADER: lambda a, d: a.insert_header(
        _str(_need(d, "i", "name", "header")), _str(_need(d, "i", "value")), _index(d, "i")
    ),
    SMFIR_CHGHEADER: lambda a, d: a.change_header(
        _str(_need(d, "m", "name", "header")), _str(d.get("value", "")), _index(d, "m")
    ),
    SMFIR_ADDRCPT: lambda a, d: a.add_recipient(_str(_need(d, "+", "rcpt", "recipient"))),
    SMFIR_ADDRCPT_PAR: lambda a, d: a.add_recipient(
        _str(_need(d, "2", "rcpt", "recipient")), d.get("args")
    ),
    SMFIR_DELRCPT: lambda a, d: a.delete_recipient(_str(_need(d, "-", "rcpt", "recipient"))),
    SMFIR_CHGFROM: lambda a, d: a.change_from(
        _str(_need(d, "e", "from", "sender", "mail")), d.get("args")
    ),
    SMFIR_REPLBODY: lambda a, d: a.replace_body(_body(_need(d, "b", "body"))),
    SMFIR_QUARANTINE: lambda a, d: a.quarantine(_str(_need(d, "q", "reason"))),
}


def _body(value: Any) -> bytes:
    return wire(value if isinstance(value, bytes) else str(value))


def adapter_class(template: Milter) -> type[mk.Milter]:
    """A milterkit Milter subclass serving ``template`` (copied per connection)."""
    actions = Action.NONE
    for bit in template.supported_actions:
        actions |= Action(bit)
    protocol = ProtocolFlag.NONE
    for bit in template.ignored_content:
        protocol |= ProtocolFlag(bit)
    name = f"{type(template).__name__}Adapter"
    attrs = {
        "template": template,
        "php_actions": actions,
        "php_protocol": protocol,
        "actions": actions,
        "__module__": __name__,
    }
    return type(name, (_Adapter,), attrs)


# ``Message``, the old name of MessageArray, still works, with a warning. Type checkers
# see a plain alias instead of the ``__getattr__``, which would type every name Any.
if TYPE_CHECKING:
    Message = MessageArray
else:

    def __getattr__(name: str) -> Any:
        if name != "Message":
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        warn_renamed("milterkit.compat.libmilterphp.Message", "MessageArray")
        return MessageArray
