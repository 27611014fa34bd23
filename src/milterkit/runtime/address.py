"""Parsing of libmilter-style listening socket specifications.

MTAs and milters traditionally describe the milter socket with a compact
string (``unix:/run/milter.sock``, ``inet:8890@127.0.0.1``,
``inet6:8890@[::1]``).  Operators copy these between the MTA configuration and
the milter configuration, so we accept every spelling they are likely to paste:

* ``unix:/path``, ``local:/path`` and a bare ``/path``   -> :class:`UnixAddress`
* ``inet:PORT``, ``inet:PORT@HOST`` and Postfix-style ``inet:HOST:PORT``
  (``HOST`` may be ``[a.b.c.d]``)                          -> :class:`InetAddress`
* ``inet6:PORT``, ``inet6:PORT@HOST`` (``HOST`` as ``::1`` or ``[::1]``) and
  ``inet6:[HOST]:PORT``                                    -> :class:`Inet6Address`
* ``fd:N`` (a listening socket inherited from the parent) -> :class:`FdAddress`

``str()`` of every address returns one canonical spelling, so a parsed value
can be logged or written back to a configuration file unambiguously.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, TypeAlias

from milterkit.runtime.errors import RuntimeConfigError

__all__ = [
    "Address",
    "FdAddress",
    "Inet6Address",
    "InetAddress",
    "UnixAddress",
    "parse_address",
]

#: Longest path that fits in ``sockaddr_un.sun_path`` on Linux (108 bytes
#: including the terminating NUL).
MAX_UNIX_PATH = 107

_HOSTNAME_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")


@dataclass(frozen=True)
class UnixAddress:
    """A filesystem (``AF_UNIX``) socket path."""

    path: str

    def __str__(self) -> str:
        return f"unix:{self.path}"


@dataclass(frozen=True)
class InetAddress:
    """An IPv4 TCP endpoint; ``host`` is a name or a dotted-quad literal.

    ``port`` 0 is only produced programmatically (never by
    :func:`parse_address`) and asks the kernel for a free port, which tests use.
    """

    host: str
    port: int
    family: ClassVar[socket.AddressFamily] = socket.AF_INET

    def __str__(self) -> str:
        return f"inet:{self.port}@{self.host}"


@dataclass(frozen=True)
class Inet6Address:
    """An IPv6 TCP endpoint; ``host`` is a name or an unbracketed literal."""

    host: str
    port: int
    family: ClassVar[socket.AddressFamily] = socket.AF_INET6

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"inet6:{self.port}@{host}"


@dataclass(frozen=True)
class FdAddress:
    """An already listening socket inherited as file descriptor ``fd``."""

    fd: int

    def __str__(self) -> str:
        return f"fd:{self.fd}"


Address: TypeAlias = UnixAddress | InetAddress | Inet6Address | FdAddress


def parse_address(spec: str) -> Address:
    """Parse ``spec`` into an address, raising :class:`RuntimeConfigError`.

    Every error message quotes the complete spec, because the caller usually
    parses several of them and the operator must know which one is wrong.
    """
    text = spec.strip()
    if not text:
        raise RuntimeConfigError(f"invalid socket spec {spec!r}: empty")
    if text.startswith("/"):
        return _parse_unix(spec, text)
    scheme, sep, rest = text.partition(":")
    if not sep:
        raise RuntimeConfigError(
            f"invalid socket spec {spec!r}: expected unix:/path, inet:PORT@HOST, "
            "inet6:PORT@HOST or fd:N"
        )
    parser = _PARSERS.get(scheme.lower())
    if parser is None:
        raise RuntimeConfigError(f"invalid socket spec {spec!r}: unknown type {scheme!r}")
    return parser(spec, rest)


def _fail(spec: str, reason: str) -> RuntimeConfigError:
    """Build the uniform error for a malformed spec."""
    return RuntimeConfigError(f"invalid socket spec {spec!r}: {reason}")


def _parse_unix(spec: str, path: str) -> UnixAddress:
    """Validate a socket path: non-empty, no NUL, short enough for sun_path."""
    if not path:
        raise _fail(spec, "missing socket path")
    if "\0" in path:
        raise _fail(spec, "socket path contains a NUL byte")
    if len(path.encode()) > MAX_UNIX_PATH:
        raise _fail(spec, f"socket path longer than {MAX_UNIX_PATH} bytes")
    return UnixAddress(path)


def _parse_port(spec: str, text: str) -> int:
    """Parse a decimal port in 1..65535 (service names are not looked up)."""
    if not text.isascii() or not text.isdigit():
        raise _fail(spec, f"port {text!r} is not a number")
    port = int(text)
    if not 1 <= port <= 65535:
        raise _fail(spec, f"port {port} out of range 1-65535")
    return port


def _unbracket(spec: str, host: str) -> str:
    """Strip one pair of ``[...]`` around a host, rejecting unbalanced ones."""
    if host.startswith("[") or host.endswith("]"):
        if not (host.startswith("[") and host.endswith("]")):
            raise _fail(spec, f"unbalanced brackets in host {host!r}")
        return host[1:-1]
    return host


def _is_hostname(host: str) -> bool:
    """Return True if ``host`` is syntactically a DNS host name."""
    if len(host) > 253:
        return False
    labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
    return all(_HOSTNAME_LABEL.match(label) for label in labels)


def _check_ipv4_host(spec: str, host: str) -> str:
    """Accept an IPv4 literal or a host name; point IPv6 users to inet6."""
    if not host:
        raise _fail(spec, "missing host")
    if ":" in host:
        raise _fail(spec, f"host {host!r} looks like IPv6; use inet6:PORT@HOST")
    if host.replace(".", "").isdigit():
        try:
            return str(ipaddress.IPv4Address(host))
        except ValueError:
            raise _fail(spec, f"invalid IPv4 address {host!r}") from None
    if not _is_hostname(host):
        raise _fail(spec, f"invalid host name {host!r}")
    return host.lower()


def _check_ipv6_host(spec: str, host: str) -> str:
    """Accept an IPv6 literal (canonicalised) or a host name."""
    if not host:
        raise _fail(spec, "missing host")
    if ":" in host:
        try:
            return str(ipaddress.IPv6Address(host))
        except ValueError:
            raise _fail(spec, f"invalid IPv6 address {host!r}") from None
    if not _is_hostname(host):
        raise _fail(spec, f"invalid host name {host!r}")
    return host.lower()


def _parse_inet(spec: str, rest: str) -> InetAddress:
    """Parse ``PORT``, ``PORT@HOST`` or Postfix-style ``HOST:PORT``."""
    if "@" in rest:
        port_text, _, host = rest.partition("@")
    elif ":" in rest:
        host, _, port_text = rest.rpartition(":")
        if not host:
            raise _fail(spec, "missing host before ':'")
    else:
        port_text, host = rest, "0.0.0.0"
    port = _parse_port(spec, port_text)
    return InetAddress(_check_ipv4_host(spec, _unbracket(spec, host)), port)


def _parse_inet6(spec: str, rest: str) -> Inet6Address:
    """Parse ``PORT``, ``PORT@HOST`` or ``[HOST]:PORT``."""
    if "@" in rest:
        port_text, _, host = rest.partition("@")
        host = _unbracket(spec, host)
    elif rest.startswith("["):
        host_part, sep, port_text = rest.partition("]:")
        if not sep:
            raise _fail(spec, "expected [HOST]:PORT")
        host = host_part[1:]
    else:
        port_text, host = rest, "::"
    port = _parse_port(spec, port_text)
    return Inet6Address(_check_ipv6_host(spec, host), port)


def _parse_fd(spec: str, rest: str) -> FdAddress:
    """Parse a non-negative decimal file descriptor number."""
    if not rest.isascii() or not rest.isdigit():
        raise _fail(spec, f"file descriptor {rest!r} is not a non-negative number")
    return FdAddress(int(rest))


def _parse_unix_scheme(spec: str, rest: str) -> UnixAddress:
    """Adapter so unix:/local: share the table signature."""
    return _parse_unix(spec, rest)


_PARSERS: dict[str, Callable[[str, str], Address]] = {
    "unix": _parse_unix_scheme,
    "local": _parse_unix_scheme,
    "inet": _parse_inet,
    "inet6": _parse_inet6,
    "fd": _parse_fd,
}
