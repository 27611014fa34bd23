"""Virus scanning through ClamAV's clamd: the message is streamed to it (INSTREAM) as it arrives.

Headers and body go to clamd while the MTA sends them, so the scan result is
there moments after the last body chunk. An infected message is rejected
(``550 5.7.1`` with the signature name) or quarantined; a clamd that is down,
slow or in error gets the ``--on-error`` answer (tempfail by default).

    python -m milterkit.contrib.clamav --socket unix:/run/milterkit/clamav.sock \\
        --clamd unix:/run/clamav/clamd.ctl --infected reject

Bytes past ``--max-scan-bytes`` are not sent (clamd would refuse them past
its StreamMaxLength); the first part is still scanned.
"""

from __future__ import annotations

import argparse
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from milterkit.contrib._common import (
    SERVICE_DECISIONS,
    HeaderRecordingMilter,
    address_argument,
    connect_service,
    filter_parser,
    header_block,
    main_with_settings,
    service_failure,
)
from milterkit.decision import Decision
from milterkit.milter import Continue, Discard, ReplyCode, Response, Skip
from milterkit.protocol.constants import Action, ProtocolFlag
from milterkit.runtime.address import Address

INFECTED_ACTIONS = ("reject", "quarantine", "discard", "tag")


class ClamdError(Exception):
    """clamd answered ERROR, closed early or said something unexpected."""


@dataclass(frozen=True)
class ClamavSettings:
    clamd: Address
    timeout: float = 30.0
    infected: str = "reject"
    on_error: Decision | str = Decision.TEMPFAIL
    max_scan_bytes: int = 25 * 1024 * 1024
    add_header: bool = True


class ClamdStream:
    """One INSTREAM scan: ``send`` chunks, then ``result``; blocking, with a timeout."""

    def __init__(self, address: Address, timeout: float) -> None:
        self.sock = connect_service(address, timeout)
        self.sock.sendall(b"zINSTREAM\0")

    def send(self, data: bytes) -> None:
        for start in range(0, len(data), 1 << 20):
            chunk = data[start : start + (1 << 20)]
            self.sock.sendall(struct.pack("!I", len(chunk)) + chunk)

    def result(self) -> str | None:
        """The signature name if infected, None if clean; ClamdError otherwise."""
        self.sock.sendall(b"\0\0\0\0")
        reply = b""
        while not reply.endswith(b"\0"):
            data = self.sock.recv(4096)
            if not data:
                break
            reply += data
        text = reply.rstrip(b"\0").decode("utf-8", "replace").strip()
        if text == "stream: OK":
            return None
        if text.startswith("stream: ") and text.endswith(" FOUND"):
            return text[len("stream: ") : -len(" FOUND")]
        raise ClamdError(
            f"clamd answered {text[:200]!r}" if text else "clamd closed the connection"
        )

    def close(self) -> None:
        self.sock.close()


class ClamavMilter(HeaderRecordingMilter):
    """Streams each message to clamd and acts on the verdict at end of message."""

    actions = Action.ADD_HEADERS | Action.QUARANTINE

    def __init__(self, settings: ClamavSettings) -> None:
        super().__init__()
        self.settings = settings
        self.scan: ClamdStream | None = None
        self.failure: Exception | None = None
        self.sent = 0

    def end_of_headers(self) -> Response:
        """Open the scan now so the body can stream as it comes."""
        try:
            self.scan = ClamdStream(self.settings.clamd, self.settings.timeout)
            self.stream(header_block(self.headers))
        except OSError as exc:
            self.fail(exc)
        return Continue()

    def body(self, chunk: bytes) -> Response:
        if self.scan is None:
            return self.skip()  # clamd failed: the rest of the body is of no use
        room = self.settings.max_scan_bytes - self.sent
        try:
            self.stream(chunk[:room])
        except OSError as exc:
            self.fail(exc)
            return self.skip()
        return Continue() if len(chunk) < room else self.skip()

    def skip(self) -> Response:
        """Skip the rest of the body where the MTA allows it (SMFIP_SKIP), else go on."""
        return Skip() if self.negotiated.protocol & ProtocolFlag.SKIP else Continue()

    def end_of_message(self) -> Response:
        scan, self.scan = self.scan, None
        if scan is None:
            return self.error_decision()
        try:
            virus = scan.result()
        except (OSError, ClamdError) as exc:
            self.fail(exc)
            return self.error_decision()
        finally:
            scan.close()
        if virus is None:
            if self.settings.add_header:
                self.add_header("X-Virus-Scanned", "clean (ClamAV)")
            return Continue()
        return self.infected(virus)

    def infected(self, virus: str) -> Response:
        self.log.info("virus found: %s; %s", virus, self.settings.infected)
        action = self.settings.infected
        if action == "reject":
            return ReplyCode(550, f"Virus found: {virus}", "5.7.1")
        if action == "discard":
            return Discard()
        if action == "quarantine":
            self.quarantine(f"virus {virus}")
        self.add_header("X-Virus-Found", virus)
        return Continue()

    def abort(self) -> None:
        self.reset()

    def close(self) -> None:
        self.reset()

    # ------------------------------------------------------------------ helpers

    def stream(self, data: bytes) -> None:
        assert self.scan is not None
        if data:
            self.scan.send(data)
            self.sent += len(data)

    def fail(self, exc: Exception) -> None:
        """Log the clamd failure once per message (with the connection id) and stop scanning."""
        if self.failure is None:
            self.failure = exc
            self.log.error(
                "clamd %s failed: %s: %s; answering %s",
                self.settings.clamd,
                type(exc).__name__,
                exc,
                self.settings.on_error,
            )
        if self.scan is not None:
            self.scan.close()
            self.scan = None

    def error_decision(self) -> Response:
        return service_failure(self.settings.on_error, "virus scanner")

    def start_message(self) -> None:
        super().start_message()
        self.reset()

    def reset(self) -> None:
        if self.scan is not None:
            self.scan.close()
        self.scan = None
        self.failure = None
        self.headers = []
        self.sent = 0


# ------------------------------------------------------------------ settings


def build_parser() -> argparse.ArgumentParser:
    parser = filter_parser("python -m milterkit.contrib.clamav", __doc__.split("\n\n")[0])
    c = parser.add_argument_group("ClamAV")
    c.add_argument(
        "--clamd",
        type=address_argument,
        default="unix:/run/clamav/clamd.ctl",
        metavar="ADDR",
        help="clamd's socket: unix:/path or inet:PORT@HOST",
    )
    c.add_argument(
        "--clamd-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="per socket operation with clamd",
    )
    c.add_argument(
        "--infected",
        choices=INFECTED_ACTIONS,
        default="reject",
        help="what to do with infected mail (tag: add X-Virus-Found only)",
    )
    c.add_argument(
        "--on-error",
        choices=SERVICE_DECISIONS,
        default="tempfail",
        help="the answer when clamd is down or fails",
    )
    c.add_argument(
        "--max-scan-bytes",
        type=int,
        default=25 * 1024 * 1024,
        metavar="BYTES",
        help="scan at most this much of each message (keep <= clamd StreamMaxLength)",
    )
    c.add_argument("--no-header", action="store_true", help="do not add X-Virus-Scanned")
    return parser


def settings_from_args(args: argparse.Namespace) -> ClamavSettings:
    if args.max_scan_bytes <= 0:
        raise ValueError("--max-scan-bytes must be positive")
    return ClamavSettings(
        clamd=args.clamd,
        timeout=args.clamd_timeout,
        infected=args.infected,
        on_error=args.on_error,
        max_scan_bytes=args.max_scan_bytes,
        add_header=not args.no_header,
    )


def main(argv: Sequence[str] | None = None) -> int:
    return main_with_settings(argv, build_parser(), settings_from_args, ClamavMilter)


if __name__ == "__main__":
    sys.exit(main())
