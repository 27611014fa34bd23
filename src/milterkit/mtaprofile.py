"""MTA profiles: how a particular MTA talks to a milter.

A filter that passes against one MTA can still break against another: the
two big MTAs differ in which macros they send and when, whether they send
ABORT after every message, whether MACRO packets precede each header and body
chunk, and how they spell an IPv6 client address (PROTOCOL.md section 12.3).
An :class:`MTAProfile` captures those differences as data so the client in
:mod:`milterkit.client` can imitate a given MTA packet for packet.

Macro values are :class:`string.Template` strings filled from a context of
session and message facts (``$client_addr``, ``$queue_id``, ``$mail_addr``
...; see :data:`CONTEXT_VARIABLES`). A macro whose value comes out empty is
not sent, which is what both MTAs do for macros without a value.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from milterkit.protocol.constants import ALL_ACTIONS, ALL_PROTOCOL, Action, Family, ProtocolFlag

__all__ = [
    "CONTEXT_VARIABLES",
    "POSTFIX",
    "POSTFIX_NONSMTP",
    "PROFILES",
    "SENDMAIL",
    "V2_ONLY",
    "FakeConnect",
    "HeaderDefault",
    "MTAProfile",
]

#: Variables a macro template may use, and where their values come from.
CONTEXT_VARIABLES: Mapping[str, str] = MappingProxyType(
    {
        "mta_hostname": "the MTA's own host name (profile.hostname)",
        "mta_version": "MTA name and version, e.g. 'Postfix 3.7.11'",
        "daemon_name": "the MTA daemon's name (profile.daemon_name)",
        "daemon_addr": "the address the MTA listens on",
        "daemon_port": "the port the MTA listens on",
        "client_addr": "the SMTP client's IP address (or socket path)",
        "client_port": "the SMTP client's port",
        "client_name": "the client's verified host name, 'unknown' when there is none",
        "client_hostname": "the host name sent in CONNECT ('[addr]' when unknown)",
        "client_ident": "'name [addr]', the value of the '_' macro",
        "helo": "the HELO/EHLO argument",
        "queue_id": "the queue id, once the MTA has one",
        "mail_addr": "sender address without angle brackets",
        "mail_host": "domain of the sender address",
        "rcpt_addr": "current recipient address without angle brackets",
        "rcpt_host": "domain of the current recipient address",
        "msg_id": "the message's Message-ID header value",
    }
)


def _frozen(stages: Mapping[str, Mapping[str, str]]) -> Mapping[str, Mapping[str, str]]:
    return MappingProxyType({k: MappingProxyType(dict(v)) for k, v in stages.items()})


@dataclass(frozen=True)
class FakeConnect:
    """Connection data an MTA invents for mail that did not come over SMTP."""

    hostname: str = "localhost"
    family: Family = Family.INET
    port: int = 0
    address: str = "127.0.0.1"
    helo: str = "localhost"


@dataclass(frozen=True)
class HeaderDefault:
    """A header the MTA keeps in its own header list (a sendmail.cf ``H`` line).

    Sendmail puts these ahead of the message's headers, in configuration
    order, and writes each one that the message does not have itself, with its
    own value. Filters never see them, but they count for INSHEADER indexes, and
    ADDHEADER or CHGHEADER of such a name replaces the value in place
    (PROTOCOL.md section 10.2).
    """

    name: str
    #: The ``?F?`` condition: written only by a delivering mailer with this
    #: flag (see :attr:`MTAProfile.mailer_flags`); "" for always.
    mailer_flag: str = ""


@dataclass(frozen=True)
class MTAProfile:
    """How one MTA (and one configuration of it) drives a milter.

    ``macros`` maps a MACRO stage letter (``"C"``, ``"H"``, ``"M"``, ``"R"``,
    ``"T"``, ``"N"``, ``"E"``) to the macros configured for it, name to value
    template. A stage present in the mapping gets a MACRO packet even when no
    value is set (Postfix and Sendmail both send empty ones); a stage absent
    from it gets none. ``available`` holds templates for further macros a
    filter may request through its OPTNEG macro lists.
    """

    name: str
    version: int
    actions: Action
    protocol: ProtocolFlag
    macros: Mapping[str, Mapping[str, str]]
    available: Mapping[str, str] = field(default_factory=dict)
    #: Postfix writes ABORT after each completed message; Sendmail does not.
    abort_after_message: bool = True
    #: Postfix sends the EOH macros before every header ('L') and the EOM
    #: macros before every body chunk ('B'); Sendmail sends neither.
    header_body_macros: bool = True
    #: Sendmail writes client IPv6 addresses as ``IPv6:addr``; Postfix does not.
    ipv6_prefix: str = ""
    #: Postfix has a queue id only after the first accepted RCPT; Sendmail at MAIL.
    queue_id_at_mail: bool = False
    #: Sendmail (>= 8.15.2) reads an empty requested macro list as "none";
    #: Postfix as "no override", so its configured list is still sent.
    empty_macro_list_disables: bool = False
    #: After a final reply at CONNECT/HELO Sendmail still sends QUIT, Postfix just closes.
    quit_after_session_verdict: bool = False
    #: Set for non-SMTP submissions: fake CONNECT/HELO data and bare addresses.
    nonsmtp: FakeConnect | None = None
    hostname: str = "mx.example.net"
    daemon_name: str = "smtpd"
    daemon_addr: str = "127.0.0.1"
    daemon_port: str = "25"
    mta_version: str = ""
    #: Postfix acts on NO*, NR_* and HDR_LEADSPC bits the filter set even when
    #: they were not offered (milter8.c keeps the filter's event mask).
    keeps_unoffered_protocol: bool = True
    #: Postfix refuses REPLBODY after another reply followed REPLBODY ("body
    #: replacement requests can't currently be mixed with other requests").
    body_replacement_lockout: bool = True
    #: What the MTA answers after a filter configuration error (Postfix with
    #: milter_default_action = tempfail).
    config_error_reply: str = "451 4.3.5 Server configuration problem - try again later"
    #: Sendmail: SKIP at RCPT leaves the filter out for the rest of the SMTP
    #: session (QUIT aside); Postfix only skips the remaining RCPTs.
    skip_rcpt_ends_session: bool = False
    #: Sendmail: SKIP at a header still sends every header and EOH, then no
    #: body; Postfix skips the remaining headers and still sends the body.
    skip_header_skips_body: bool = False
    #: Sendmail picks the EOM macro list by the EOH list's flag: a requested
    #: EOM list counts only when an EOH list was requested too.
    eom_list_follows_eoh: bool = False
    #: Whose header edit rules ``CheckResult.apply()`` follows: "postfix", or
    #: "sendmail": CHGHEADER deletes by nulling the value (later indexes of
    #: that name do not shift) and keeps the header's own spelling of its name;
    #: ADDHEADER and CHGHEADER fill a header of :attr:`header_defaults` in place;
    #: ADDHEADER of a name already present goes before its first occurrence;
    #: INSHEADER counts :attr:`header_defaults` too.
    header_edits: str = "postfix"
    #: With ``header_edits="sendmail"``: the MTA's own header list, which
    #: comes before the message's headers (Sendmail: the cf ``H`` lines).
    #: ``apply()`` never invents their values; it only places what a filter
    #: wrote into them.
    header_defaults: tuple[HeaderDefault, ...] = ()
    #: Flags of the mailer that delivers, for the ``?F?`` conditions of
    #: :attr:`header_defaults`.
    mailer_flags: str = ""
    reject_reply: str = "550 5.7.1 Command rejected"
    tempfail_reply: str = "451 4.7.1 Service unavailable - try again later"
    shutdown_reply: str = "421 4.7.0 Server closing connection"

    def __post_init__(self) -> None:
        object.__setattr__(self, "macros", _frozen(self.macros))
        object.__setattr__(self, "available", MappingProxyType(dict(self.available)))

    def replace(self, **changes: object) -> MTAProfile:
        """A copy with some fields changed (e.g. another hostname or offer)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def template_for(self, name: str) -> str | None:
        """The value template of a macro in any stage list or in :attr:`available`."""
        for stage in self.macros.values():
            if name in stage:
                return stage[name]
        return self.available.get(name)


_POSTFIX_MACROS = {
    "C": {
        "j": "$mta_hostname",
        "{daemon_name}": "$daemon_name",
        "{daemon_addr}": "$daemon_addr",
        "v": "$mta_version",
        "_": "$client_ident",
    },
    "H": {
        "{tls_version}": "",
        "{cipher}": "",
        "{cipher_bits}": "",
        "{cert_subject}": "",
        "{cert_issuer}": "",
    },
    "M": {
        "i": "$queue_id",
        "{auth_type}": "",
        "{auth_authen}": "",
        "{auth_author}": "",
        "{mail_addr}": "$mail_addr",
        "{mail_host}": "$mail_host",
        "{mail_mailer}": "virtual",
    },
    "R": {
        "i": "$queue_id",
        "{rcpt_addr}": "$rcpt_addr",
        "{rcpt_host}": "$rcpt_host",
        "{rcpt_mailer}": "virtual",
    },
    "T": {"i": "$queue_id"},
    "N": {"i": "$queue_id"},
    "E": {"i": "$queue_id"},
}

_POSTFIX_AVAILABLE = {
    "{client_addr}": "$client_addr",
    "{client_name}": "$client_name",
    "{client_port}": "$client_port",
    "{client_ptr}": "$client_name",
    "{client_connections}": "1",
    "{daemon_port}": "$daemon_port",
}

#: Postfix 3.7 with ``milter_protocol = 6`` and the default macro lists.
POSTFIX = MTAProfile(
    name="postfix",
    version=6,
    actions=ALL_ACTIONS,
    protocol=ALL_PROTOCOL,
    macros=_POSTFIX_MACROS,
    available=_POSTFIX_AVAILABLE,
    mta_version="Postfix 3.7.11",
)

#: Postfix 3.7 with ``milter_protocol = 2``: v2 offer, same macros, no DATA.
V2_ONLY = POSTFIX.replace(name="v2", version=2, protocol=ProtocolFlag(0x7F))

#: Postfix's ``non_smtpd_milters`` path (``sendmail`` command): fake connect
#: data, bare addresses, queue id from MAIL on, no ABORT after the message.
POSTFIX_NONSMTP = POSTFIX.replace(
    name="postfix-nonsmtp",
    macros={
        **_POSTFIX_MACROS,
        "M": {"i": "$queue_id", "{mail_addr}": "$mail_addr"},
        "R": {"i": "$queue_id", "{rcpt_addr}": "$rcpt_addr"},
    },
    abort_after_message=False,
    queue_id_at_mail=True,
    nonsmtp=FakeConnect(),
)

#: Sendmail 8.17 with the m4 ``cf`` defaults.
SENDMAIL = MTAProfile(
    name="sendmail",
    version=6,
    actions=ALL_ACTIONS,
    protocol=ALL_PROTOCOL,
    macros={
        "C": {
            "j": "$mta_hostname",
            "_": "$client_ident",
            "{daemon_name}": "MTA",
            "{if_name}": "$mta_hostname",
            "{if_addr}": "",  # Sendmail leaves it unset for loopback clients
        },
        "H": dict(_POSTFIX_MACROS["H"]),
        "M": {
            "i": "$queue_id",
            "{auth_type}": "",
            "{auth_authen}": "",
            "{auth_ssf}": "",
            "{auth_author}": "",
            "{mail_mailer}": "esmtp",
            "{mail_host}": "$mail_host",
            "{mail_addr}": "$mail_addr",
        },
        "R": {
            "{rcpt_mailer}": "esmtp",
            "{rcpt_host}": "$rcpt_host",
            "{rcpt_addr}": "$rcpt_addr",
        },
        "E": {"{msg_id}": "$msg_id"},
    },
    available={
        "{client_addr}": "$client_addr",
        "{client_name}": "$client_name",
        "{client_port}": "$client_port",
        "{client_ptr}": "$client_name",
        "{daemon_port}": "$daemon_port",
    },
    abort_after_message=False,
    header_body_macros=False,
    ipv6_prefix="IPv6:",
    queue_id_at_mail=True,
    empty_macro_list_disables=True,
    quit_after_session_verdict=True,
    keeps_unoffered_protocol=False,
    body_replacement_lockout=False,
    skip_rcpt_ends_session=True,
    skip_header_skips_body=True,
    eom_list_follows_eoh=True,
    header_edits="sendmail",
    # proto.m4's H lines; the m4 cf's local mailer has D, F, M and P (esmtp has no P)
    header_defaults=(
        HeaderDefault("Return-Path", "P"),
        HeaderDefault("Received"),
        HeaderDefault("Resent-Date", "D"),
        HeaderDefault("Date", "D"),
        HeaderDefault("Resent-From", "F"),
        HeaderDefault("From", "F"),
        HeaderDefault("Full-Name", "x"),
        HeaderDefault("Resent-Message-Id", "M"),
        HeaderDefault("Message-Id", "M"),
    ),
    mailer_flags="DFMP",
    daemon_name="MTA",
    mta_version="8.17.1",
    tempfail_reply="451 4.3.2 Please try again later",
)

#: The ready profiles by the names the command line accepts.
PROFILES: Mapping[str, MTAProfile] = MappingProxyType(
    {
        "postfix": POSTFIX,
        "sendmail": SENDMAIL,
        "v2": V2_ONLY,
        "postfix-nonsmtp": POSTFIX_NONSMTP,
    }
)
