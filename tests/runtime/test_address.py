"""Tests for libmilter-style socket spec parsing."""

from __future__ import annotations

import dataclasses

import pytest

from milterkit.runtime.address import (
    FdAddress,
    Inet6Address,
    InetAddress,
    UnixAddress,
    parse_address,
)
from milterkit.runtime.errors import RuntimeConfigError


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("unix:/run/milter.sock", UnixAddress("/run/milter.sock")),
        ("local:/run/milter.sock", UnixAddress("/run/milter.sock")),
        ("UNIX:/run/milter.sock", UnixAddress("/run/milter.sock")),
        ("/var/spool/postfix/milter", UnixAddress("/var/spool/postfix/milter")),
        ("unix:relative.sock", UnixAddress("relative.sock")),
        ("inet:8890@127.0.0.1", InetAddress("127.0.0.1", 8890)),
        ("inet:8890@Localhost", InetAddress("localhost", 8890)),
        ("inet:8890", InetAddress("0.0.0.0", 8890)),
        ("inet:127.0.0.1:8890", InetAddress("127.0.0.1", 8890)),
        ("inet:[127.0.0.1]:8890", InetAddress("127.0.0.1", 8890)),
        ("inet:milter.example.org:10025", InetAddress("milter.example.org", 10025)),
        ("inet:1@10.0.0.1", InetAddress("10.0.0.1", 1)),
        ("inet:65535@10.0.0.1", InetAddress("10.0.0.1", 65535)),
        ("inet6:8890@::1", Inet6Address("::1", 8890)),
        ("inet6:8890@[::1]", Inet6Address("::1", 8890)),
        ("inet6:8890@[0:0:0:0:0:0:0:1]", Inet6Address("::1", 8890)),
        ("inet6:8890@ip6-localhost", Inet6Address("ip6-localhost", 8890)),
        ("inet6:8890", Inet6Address("::", 8890)),
        ("inet6:[::1]:8890", Inet6Address("::1", 8890)),
        ("fd:3", FdAddress(3)),
        ("  inet:25@127.0.0.1  ", InetAddress("127.0.0.1", 25)),
    ],
)
def test_valid_specs(spec: str, expected: object) -> None:
    assert parse_address(spec) == expected


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("milter.sock", "expected unix:/path"),
        ("tcp:25@localhost", "unknown type 'tcp'"),
        ("unix:", "missing socket path"),
        ("unix:/tmp/a\0b", "NUL"),
        ("unix:/" + "x" * 120, "longer than 107"),
        ("inet:", "is not a number"),
        ("inet:0@127.0.0.1", "out of range"),
        ("inet:65536@127.0.0.1", "out of range"),
        ("inet:-1@127.0.0.1", "is not a number"),
        ("inet:smtp@127.0.0.1", "is not a number"),
        ("inet:٣@127.0.0.1", "is not a number"),
        ("inet:25@", "missing host"),
        ("inet::25", "missing host"),
        ("inet:25@256.1.1.1", "invalid IPv4 address"),
        ("inet:25@::1", "use inet6"),
        ("inet:25@bad_host!", "invalid host name"),
        ("inet:25@-bad.example", "invalid host name"),
        ("inet:25@[127.0.0.1", "unbalanced brackets"),
        ("inet6:25@::g", "invalid IPv6 address"),
        ("inet6:25@", "missing host"),
        ("inet6:[::1]", "expected [HOST]:PORT"),
        ("inet6:70000@::1", "out of range"),
        ("fd:", "not a non-negative number"),
        ("fd:-1", "not a non-negative number"),
        ("fd:three", "not a non-negative number"),
    ],
)
def test_invalid_specs_name_the_spec(spec: str, reason: str) -> None:
    with pytest.raises(RuntimeConfigError) as info:
        parse_address(spec)
    message = str(info.value)
    assert repr(spec) in message
    assert reason in message


@pytest.mark.parametrize(
    ("spec", "canonical"),
    [
        ("local:/run/m.sock", "unix:/run/m.sock"),
        ("/run/m.sock", "unix:/run/m.sock"),
        ("inet:127.0.0.1:8890", "inet:8890@127.0.0.1"),
        ("inet:8890", "inet:8890@0.0.0.0"),
        ("inet6:8890@::1", "inet6:8890@[::1]"),
        ("inet6:8890", "inet6:8890@[::]"),
        ("inet6:8890@ip6-localhost", "inet6:8890@ip6-localhost"),
        ("fd:7", "fd:7"),
    ],
)
def test_str_is_canonical_and_round_trips(spec: str, canonical: str) -> None:
    address = parse_address(spec)
    assert str(address) == canonical
    assert parse_address(str(address)) == address


def test_addresses_are_frozen() -> None:
    address = parse_address("inet:25@127.0.0.1")
    assert isinstance(address, InetAddress)
    with pytest.raises(dataclasses.FrozenInstanceError):
        address.port = 26  # type: ignore[misc]
