"""What the cookbook filters share: the daemon command line, decisions, networks, messages."""

from __future__ import annotations

import argparse
import ipaddress
import socket
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

from milterkit.cli.run import add_serve_options, daemon_config
from milterkit.decision import Decision
from milterkit.milter import Accept, Continue, Milter, ReplyCode, Response
from milterkit.protocol.text import wire
from milterkit.runtime.address import (
    Address,
    FdAddress,
    Inet6Address,
    InetAddress,
    UnixAddress,
    parse_address,
)
from milterkit.runtime.daemon import run_daemon
from milterkit.runtime.errors import RuntimeConfigError

#: How a filter answers when the service it needs (clamd, spamd, the store) fails.
#: (Decisions, so also their names: argparse's choices and the settings take strings.)
SERVICE_DECISIONS = (Decision.TEMPFAIL, Decision.ACCEPT, Decision.REJECT)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def filter_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """An argument parser with ``--socket`` and every option of ``milterkit run``."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_serve_options(parser)
    return parser


def serve(factory: Callable[[], Milter], args: argparse.Namespace) -> int:
    """Run ``factory`` as the daemon ``milterkit run`` would, with the parsed options."""
    return run_daemon(factory, daemon_config(args))


S = TypeVar("S")


def main_with_settings(
    argv: Sequence[str] | None,
    parser: argparse.ArgumentParser,
    read_settings: Callable[[argparse.Namespace], S],
    make_milter: Callable[[S], Milter],
) -> int:
    """The ``main()`` of a contrib filter: parse, build the settings, serve.

    A settings error (ValueError, OSError such as an unreadable key) is a usage
    error: argparse prints it and exits 64, before anything is bound.
    """
    args = parser.parse_args(argv)
    try:
        settings = read_settings(args)
    except (OSError, ValueError) as exc:
        parser.error(str(exc))
    return serve(lambda: make_milter(settings), args)


def service_failure(decision: Decision | str, what: str) -> Response:
    """The reply for a message the service could not judge (``decision`` from settings,
    one of SERVICE_DECISIONS or its name; anything else is a ValueError naming them)."""
    chosen = Decision.parse(decision, SERVICE_DECISIONS)
    if chosen is Decision.ACCEPT:
        return Accept()
    if chosen is Decision.REJECT:
        return ReplyCode(550, f"{what} unavailable, message refused", "5.7.1")
    return ReplyCode(451, f"{what} unavailable, try again later", "4.3.0")


def networks(values: Iterable[str]) -> tuple[Network, ...]:
    """Parse CIDR strings (``192.0.2.0/24``, ``::1``); ValueError names the bad one."""
    out: list[Network] = []
    for value in values:
        try:
            out.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{value!r} is not an IP network like 192.0.2.0/24") from None
    return tuple(out)


def network_argument(value: str) -> Network:
    """argparse type for one CIDR network."""
    try:
        return networks([value])[0]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def in_networks(address: str | None, nets: Sequence[Network]) -> bool:
    """Is ``address`` (an IP literal, possibly ``IPv6:``-prefixed as Sendmail sends) in one?"""
    if not address:
        return False
    if address.lower().startswith("ipv6:"):
        address = address[5:]
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == net.version and ip in net for net in nets)


class HeaderRecordingMilter(Milter):
    """A filter that rebuilds the message at end of message keeps its header fields here.

    milterkit streams headers to ``header()`` and keeps none itself, so each
    cookbook filter that scans or signs the whole message records them, in
    order, afresh for each message. Subclasses reset their own per-message
    state by extending :meth:`start_message`, which runs at MAIL FROM.
    """

    def __init__(self) -> None:
        super().__init__()
        self.headers: list[tuple[str, str]] = []

    def start_message(self) -> None:
        self.headers = []

    def mail_from(self, sender: str, params: list[str]) -> Response:
        self.start_message()
        return Continue()

    def header(self, name: str, value: str) -> Response:
        self.headers.append((name, value))
        return Continue()


def header_block(headers: Iterable[tuple[str, str]], *, leading_space: bool = False) -> bytes:
    """The header section as the MTA holds it: CRLF line ends, blank line at the end.

    Values come with LF (or CRLF) inside folded headers; both become CRLF.
    Without ``leading_space`` the MTA dropped the space after the colon, so
    one is put back.
    """
    lines = []
    for name, value in headers:
        sep = ":" if leading_space else ": "
        field = f"{name}{sep}{value}".replace("\r\n", "\n").replace("\n", "\r\n")
        lines.append(wire(field) + b"\r\n")
    return b"".join(lines) + b"\r\n"


def service_address(spec: str) -> Address:
    """A service address in milter syntax (``unix:/path``, ``inet:PORT@HOST``); ValueError."""
    try:
        address = parse_address(spec)
    except RuntimeConfigError as exc:
        raise ValueError(str(exc)) from None
    if isinstance(address, FdAddress):
        raise ValueError(f"{spec!r}: a service address must be unix:, inet: or inet6:")
    return address


def connect_service(address: Address, timeout: float) -> socket.socket:
    """A connected blocking socket to ``address`` with ``timeout`` on every operation."""
    if isinstance(address, UnixAddress):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target: str | tuple[str, int] = address.path
    else:
        assert isinstance(address, InetAddress | Inet6Address)
        sock = socket.socket(address.family, socket.SOCK_STREAM)
        target = (address.host, address.port)
    sock.settimeout(timeout)
    try:
        sock.connect(target)
    except OSError:
        sock.close()
        raise
    return sock


def address_argument(value: str) -> Address:
    """argparse type for :func:`service_address`."""
    try:
        return service_address(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
