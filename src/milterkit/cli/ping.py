"""``milterkit ping --socket ADDR``: is the milter there and speaking the protocol?

A health probe one level above a TCP connect: it sends OPTNEG as an MTA
would, reads the filter's OPTNEG reply, prints the version, actions and
protocol flags the filter asked for, and sends QUIT. Nothing reaches a
milter callback (no CONNECT, no message), so it is cheap enough to run every
second from a load balancer or a Kubernetes probe.

Exit status: 0 the milter answered; 64 bad usage (address); 69 it cannot be
reached, refused or closed the connection without answering (a draining
daemon does that); 75 no answer within ``--timeout``; 76 it answered with
something that is not a valid OPTNEG reply.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from dataclasses import dataclass
from typing import Any, TextIO

from milterkit.cli.describe import describe_flags
from milterkit.client.aio import open_stream
from milterkit.client.errors import (
    MilterAddressError,
    MilterConnectionError,
    MilterError,
    MilterProtocolError,
    MilterTimeout,
)
from milterkit.protocol.constants import Action, ProtocolFlag
from milterkit.protocol.errors import ProtocolError
from milterkit.protocol.events import NeedData
from milterkit.protocol.messages import OptNeg, Quit
from milterkit.protocol.mta import MTAConnection

__all__ = ["PingResult", "add_parser", "ping", "run"]

EX_OK, EX_USAGE, EX_UNAVAILABLE, EX_TEMPFAIL, EX_PROTOCOL = 0, 64, 69, 75, 76


@dataclass(frozen=True)
class PingResult:
    """What the filter answered to OPTNEG, and how long the round trip took."""

    version: int
    actions: Action
    protocol: ProtocolFlag
    seconds: float

    def describe(self, address: str) -> str:
        return (
            f"milter at {address} answered in {self.seconds * 1000:.1f} ms: "
            f"version {self.version}, "
            f"actions {describe_flags(self.actions, Action)}, "
            f"protocol {describe_flags(self.protocol, ProtocolFlag)}"
        )


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``ping`` on the main parser's subparsers."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "ping",
        help="negotiate with a milter and quit (a health probe)",
        description="Open a connection to the milter, negotiate (OPTNEG), print what it "
        "answered, and quit. No callback of the milter runs.",
        epilog="exit status: 0 answered, 64 usage, 69 unreachable or refused, 75 timeout, "
        "76 protocol error",
    )
    parser.add_argument("--socket", required=True, metavar="ADDR", help="unix:/p, inet:PORT@HOST")
    parser.add_argument(
        "--timeout", type=float, default=5.0, metavar="S", help="for the whole exchange (5)"
    )
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Execute ``milterkit ping``; returns the exit status documented above."""
    out = out or sys.stdout
    err = err or sys.stderr
    if args.timeout <= 0:
        print(f"milterkit ping: --timeout must be positive, not {args.timeout:g}", file=err)
        return EX_USAGE
    try:
        result = asyncio.run(ping(args.socket, args.timeout))
    except MilterError as exc:
        print(f"milterkit ping: {exc}", file=err)
        return _status(exc)
    print(result.describe(args.socket), file=out)
    return EX_OK


def _status(exc: MilterError) -> int:
    if isinstance(exc, MilterAddressError):
        return EX_USAGE
    if isinstance(exc, MilterTimeout):
        return EX_TEMPFAIL
    if isinstance(exc, MilterProtocolError):
        return EX_PROTOCOL
    return EX_UNAVAILABLE


async def ping(address: str, timeout: float = 5.0) -> PingResult:
    """Negotiate with the filter at ``address`` and quit; raises a MilterError on failure."""
    started = time.monotonic()
    try:
        return await asyncio.wait_for(_exchange(address, timeout, started), timeout)
    except asyncio.TimeoutError:
        raise MilterTimeout(
            f"the filter at {address} did not answer OPTNEG within {timeout:g} s",
            address=address,
            stage="negotiate",
        ) from None


async def _exchange(address: str, timeout: float, started: float) -> PingResult:
    reader, writer = await open_stream(address, timeout)
    try:
        conn = MTAConnection()
        writer.write(conn.send(MTAConnection.default_offer()))
        reply = await _read_optneg(conn, reader, address)
        seconds = time.monotonic() - started
        writer.write(conn.send(Quit()))
        with contextlib.suppress(OSError):  # the answer is what counts
            await writer.drain()
        return PingResult(reply.version, reply.actions, reply.protocol, seconds)
    finally:
        writer.close()


async def _read_optneg(conn: MTAConnection, reader: asyncio.StreamReader, address: str) -> OptNeg:
    """Read until the OPTNEG reply; EOF before it means refused, garbage a protocol error."""
    eof = False
    while True:
        try:
            event = conn.next_event()
        except ProtocolError as exc:
            if eof and conn.buffered == 0:
                raise MilterConnectionError(
                    f"the filter at {address} closed the connection without answering OPTNEG",
                    address=address,
                    stage="negotiate",
                ) from None
            raise MilterProtocolError(
                f"the filter at {address} broke the protocol: {exc}",
                address=address,
                stage="negotiate",
            ) from None
        if isinstance(event, OptNeg):
            return event
        if not isinstance(event, NeedData):  # the connection cannot close while awaiting
            raise MilterProtocolError(
                f"the filter at {address} answered OPTNEG with {type(event).__name__}",
                address=address,
                stage="negotiate",
            )
        try:
            data = await reader.read(65536)
        except OSError as exc:
            raise MilterConnectionError(
                f"the filter at {address} reset the connection: {exc.strerror or exc}",
                address=address,
                stage="negotiate",
            ) from None
        eof = not data
        conn.receive_data(data)
