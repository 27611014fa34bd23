"""Spam scoring through SpamAssassin's spamd, speaking the spamc protocol (SYMBOLS).

At end of message the collected message (spooled to a temporary file past
1 MiB) is sent to spamd. The filter adds ``X-Spam-Score`` and
``X-Spam-Status`` (replacing any the message came with), quarantines it
above ``--quarantine-score`` and rejects it above ``--reject-score``.

    python -m milterkit.contrib.spamassassin --socket inet:8894@127.0.0.1 \\
        --spamd inet:783@127.0.0.1 --quarantine-score 8 --reject-score 15

Messages over ``--max-size`` are not scanned (as spamc); they are marked so.
spamd being down or failing gets the ``--on-error`` answer (accept by default).
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO

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
from milterkit.milter import Continue, ReplyCode, Response
from milterkit.protocol.constants import Action
from milterkit.runtime.address import Address

OUR_HEADERS = ("X-Spam-Status", "X-Spam-Score", "X-Spam-Flag")


class SpamdError(Exception):
    """spamd answered an error code, closed early, or said something unexpected."""


@dataclass(frozen=True)
class SpamResult:
    """spamd's verdict: is it spam by spamd's own threshold, the score, the rules that hit."""

    is_spam: bool
    score: float
    threshold: float
    symbols: tuple[str, ...]


@dataclass(frozen=True)
class SpamSettings:
    spamd: Address
    timeout: float = 60.0
    user: str | None = None
    quarantine_score: float | None = None
    reject_score: float | None = None
    max_size: int = 500 * 1024
    on_error: Decision | str = Decision.ACCEPT


def spamd_check(
    address: Address, timeout: float, head: bytes, body: IO[bytes], size: int, user: str | None
) -> SpamResult:
    """One SYMBOLS request (spamc protocol 1.5): the message goes out in 64 KiB pieces."""
    with connect_service(address, timeout) as sock:
        request = [b"SYMBOLS SPAMC/1.5", b"Content-length: %d" % (len(head) + size)]
        if user:
            request.append(b"User: " + user.encode())
        sock.sendall(b"\r\n".join(request) + b"\r\n\r\n" + head)
        body.seek(0)
        while chunk := body.read(65536):
            sock.sendall(chunk)
        # As spamc: spamd reads lines, so a body without a final line break would
        # leave it waiting for one; end-of-file ends the last line.
        with contextlib.suppress(OSError):  # spamd may have answered and closed already
            sock.shutdown(socket.SHUT_WR)
        reply = b""
        while data := sock.recv(65536):
            reply += data
    return parse_reply(reply)


def parse_reply(reply: bytes) -> SpamResult:
    """``SPAMD/1.1 0 EX_OK``, headers (``Spam: True ; 15.2 / 5.0``), blank line, symbols."""
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.decode("utf-8", "replace").split("\r\n")
    status = lines[0].split(None, 2)
    if not reply:
        raise SpamdError("spamd closed the connection without answering")
    if len(status) < 2 or not status[0].startswith("SPAMD/"):
        raise SpamdError(f"spamd answered {lines[0][:100]!r}")
    if status[1] != "0":
        raise SpamdError(f"spamd answered {lines[0][:100]!r}")
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "spam":
            return spam_header(value, body.decode("utf-8", "replace"))
    raise SpamdError(f"spamd answered without a Spam header: {head[:200]!r}")


def spam_header(value: str, symbols: str) -> SpamResult:
    flag, _, scores = value.partition(";")
    score, _, threshold = scores.partition("/")
    try:
        return SpamResult(
            flag.strip().lower() == "true",
            float(score),
            float(threshold),
            tuple(s.strip() for s in symbols.strip().split(",") if s.strip()),
        )
    except ValueError:
        raise SpamdError(f"spamd sent a bad Spam header: {value.strip()[:100]!r}") from None


class SpamAssassinMilter(HeaderRecordingMilter):
    """Scores each message with spamd; tags, quarantines or rejects by the score."""

    actions = Action.ADD_HEADERS | Action.CHANGE_HEADERS | Action.QUARANTINE
    collect_body = True
    max_body_bytes = None  # over --max-size is not scanned; the body is only spooled

    def __init__(self, settings: SpamSettings) -> None:
        super().__init__()
        self.settings = settings

    def end_of_message(self) -> Response:
        head = header_block(self.headers)
        if len(head) + self.body_size > self.settings.max_size:
            self.replace_our_headers(f"No, skipped: over {self.settings.max_size} bytes", None)
            return Continue()
        try:
            result = spamd_check(
                self.settings.spamd,
                self.settings.timeout,
                head,
                self.body_file,
                self.body_size,
                self.settings.user,
            )
        except (OSError, SpamdError) as exc:
            self.log.error(
                "spamd %s failed: %s: %s; answering %s",
                self.settings.spamd,
                type(exc).__name__,
                exc,
                self.settings.on_error,
            )
            return service_failure(self.settings.on_error, "spam filter")
        return self.act_on(result)

    def act_on(self, result: SpamResult) -> Response:
        s = self.settings
        score = f"{result.score:.1f}"
        if s.reject_score is not None and result.score >= s.reject_score:
            self.log.info("rejected as spam, score %s: %s", score, ",".join(result.symbols))
            return ReplyCode(550, f"Message refused as spam (score {score})", "5.7.1")
        if s.quarantine_score is not None and result.score >= s.quarantine_score:
            self.quarantine(f"spam score {score}")
        status = (
            f"{'Yes' if result.is_spam else 'No'}, score={score} required={result.threshold:.1f}"
            f"\n\ttests={','.join(result.symbols) or 'none'}"
        )
        self.replace_our_headers(status, score)
        return Continue()

    def replace_our_headers(self, status: str, score: str | None) -> None:
        """Delete the X-Spam-* headers the message came with, then add ours."""
        for name in OUR_HEADERS:
            count = sum(1 for n, _ in self.headers if n.lower() == name.lower())
            for index in range(count, 0, -1):
                self.change_header(name, "", index)  # last first: indexes stay valid
        self.add_header("X-Spam-Status", status)
        if score is not None:
            self.add_header("X-Spam-Score", score)


# ------------------------------------------------------------------ settings


def build_parser() -> argparse.ArgumentParser:
    parser = filter_parser("python -m milterkit.contrib.spamassassin", __doc__.split("\n\n")[0])
    s = parser.add_argument_group("SpamAssassin")
    s.add_argument(
        "--spamd",
        type=address_argument,
        default="inet:783@127.0.0.1",
        metavar="ADDR",
        help="spamd's socket: inet:PORT@HOST or unix:/path",
    )
    s.add_argument(
        "--spamd-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="per socket operation with spamd",
    )
    s.add_argument("--spamd-user", metavar="USER", help="the User spamd scores for")
    s.add_argument(
        "--quarantine-score",
        type=float,
        metavar="SCORE",
        help="quarantine mail scoring this or more",
    )
    s.add_argument(
        "--reject-score", type=float, metavar="SCORE", help="reject mail scoring this or more"
    )
    s.add_argument(
        "--max-size",
        type=int,
        default=500 * 1024,
        metavar="BYTES",
        help="do not scan larger messages (as spamc)",
    )
    s.add_argument(
        "--on-error",
        choices=SERVICE_DECISIONS,
        default="accept",
        help="the answer when spamd is down or fails",
    )
    return parser


def settings_from_args(args: argparse.Namespace) -> SpamSettings:
    q, r = args.quarantine_score, args.reject_score
    if q is not None and r is not None and q > r:
        raise ValueError("--quarantine-score must not be above --reject-score")
    if args.max_size <= 0:
        raise ValueError("--max-size must be positive")
    return SpamSettings(
        spamd=args.spamd,
        timeout=args.spamd_timeout,
        user=args.spamd_user,
        quarantine_score=q,
        reject_score=r,
        max_size=args.max_size,
        on_error=args.on_error,
    )


def main(argv: Sequence[str] | None = None) -> int:
    return main_with_settings(argv, build_parser(), settings_from_args, SpamAssassinMilter)


if __name__ == "__main__":
    sys.exit(main())
