"""``milterkit check``: run one message through a milter and show what it did.

The exit status makes the command usable in scripts and CI:

====  ===========================================================
0     accepted (the filter said continue or accept)
1     rejected (reject, or a 5xx reply code)
2     temporarily failed (tempfail, a 4xx reply code, shutdown)
3     discarded
4     accepted but quarantined (the MTA would hold it)
64    usage error (bad option, bad socket address, no recipient)
66    the message file cannot be read
69    cannot connect, or the filter dropped the connection
70    internal error (a bug in milterkit)
73    the --apply file cannot be written
74    the report cannot be written (stdout closed or failing)
75    the filter did not answer in time
76    the filter broke the protocol (or went over a limit)
====  ===========================================================

Statuses 0-4 are only ever the filter's decision: an error writing the
output never turns into one. Every string the filter chose is printed
escaped (:mod:`milterkit.cli.display`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import traceback
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

from milterkit.cli.describe import describe_flags, describe_modification
from milterkit.cli.display import (
    encodable,
    json_safe,
    printable,
    printable_reply,
    write_atomically,
)
from milterkit.client import (
    ClientInfo,
    ClientOptions,
    MilterAddressError,
    MilterClient,
    MilterConnectionError,
    MilterError,
    MilterProtocolError,
    MilterTimeout,
)
from milterkit.message import ParsedMessage, envelope_from_headers
from milterkit.mtaprofile import PROFILES
from milterkit.protocol.constants import Action, ProtocolFlag
from milterkit.result import CheckResult, StageResult

__all__ = ["EXIT_CODES", "add_parser", "exit_status", "run"]

EX_USAGE, EX_NOINPUT, EX_UNAVAILABLE, EX_TEMPFAIL, EX_PROTOCOL = 64, 66, 69, 75, 76
EX_SOFTWARE, EX_CANTCREAT, EX_IOERR = 70, 73, 74

#: Exit status per final decision (quarantine is checked first, see exit_status).
EXIT_CODES = {"continue": 0, "accept": 0, "reject": 1, "tempfail": 2, "discard": 3}
EXIT_QUARANTINED = 4


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``check`` on the main parser's subparsers."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "check",
        help="run a message through a milter like an MTA and show the outcome",
        description="Send MESSAGE to the milter at --socket as Postfix or Sendmail "
        "would, then print the negotiation, each step's decision and the modifications.",
        epilog="exit status: 0 accepted, 1 rejected, 2 tempfailed, 3 discarded, "
        "4 quarantined, 64 usage, 66 no message, 69 connection, 70 internal error, "
        "73 cannot write --apply, 74 cannot write output, 75 timeout, 76 protocol",
    )
    parser.add_argument("message", metavar="MESSAGE", help="message file (RFC 5322), - for stdin")
    parser.add_argument("--socket", required=True, metavar="ADDR", help="unix:/p, inet:PORT@HOST")
    parser.add_argument("--from", dest="sender", metavar="ADDR", help="default: From header")
    parser.add_argument(
        "--rcpt", action="append", metavar="ADDR", help="repeatable; default: To/Cc headers"
    )
    parser.add_argument("--helo", default="client.example.org", metavar="NAME")
    parser.add_argument("--client-ip", default="127.0.0.1", metavar="IP", help="or /path, or ''")
    parser.add_argument("--client-port", type=int, default=50000, metavar="PORT")
    parser.add_argument("--client-name", metavar="NAME", help="verified client host name")
    parser.add_argument(
        "--macro", action="append", default=[], metavar="NAME=VALUE", help="repeatable"
    )
    parser.add_argument("--profile", choices=sorted(PROFILES), default="postfix")
    parser.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="deadline for each reply, from sending the command; PROGRESS does not extend it",
    )
    parser.add_argument("--apply", metavar="OUT", help="write the message as it would be delivered")
    parser.add_argument("--received", metavar="HEADER", help="MTA Received: header for --apply")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Execute ``milterkit check``; returns the exit status documented above."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        macros = _parse_macros(args.macro)
    except ValueError as exc:
        return _fail(err, EX_USAGE, str(exc))
    try:
        data = _read_message(args.message)
    except OSError as exc:
        return _fail(err, EX_NOINPUT, f"cannot read message {args.message!r}: {exc.strerror}")
    try:
        result = _check(args, data, macros)
    except MilterError as exc:
        return _fail(err, _error_status(exc), printable(str(exc)))
    except ValueError as exc:
        return _fail(err, EX_USAGE, printable(str(exc)))
    except Exception:
        return _fail(err, EX_SOFTWARE, f"internal error:\n{traceback.format_exc()}")
    if args.apply:
        status = _apply(result, data, args, err)
        if status:
            return status
    if not _write_report(out, _report(result, args, out)):
        _fail(err, EX_IOERR, "cannot write the report to standard output")
        return EX_IOERR
    return exit_status(result)


def _apply(result: CheckResult, data: bytes, args: argparse.Namespace, err: TextIO) -> int:
    """Write the --apply file; 0, or the exit status of the failure."""
    try:
        delivered = result.apply(data, received_header=args.received)
    except ValueError as exc:
        return _fail(err, EX_USAGE, printable(str(exc)))
    try:
        write_atomically(args.apply, delivered.message_bytes)
    except OSError as exc:
        return _fail(err, EX_CANTCREAT, f"cannot write {args.apply!r}: {exc.strerror or exc}")
    return 0


def _report(result: CheckResult, args: argparse.Namespace, out: TextIO) -> str:
    """The report as text ``out`` can encode: escaped, never a UnicodeEncodeError."""
    encoding = getattr(out, "encoding", None)
    if not args.json:
        return encodable(render(result, args.socket), encoding)
    text = json_safe(result.to_json())
    if encodable(text, encoding) != text:
        text = json.dumps(result.as_dict(), indent=2, ensure_ascii=True)
    return text


def _write_report(out: TextIO, text: str) -> bool:
    """Print the report; False if the stream failed (closed pipe, I/O error)."""
    try:
        print(text, file=out)
        out.flush()
    except (OSError, ValueError, UnicodeError):
        if out is sys.stdout:
            # a closed pipe would fail again when the interpreter flushes stdout
            with contextlib.suppress(OSError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return False
    return True


def exit_status(result: CheckResult) -> int:
    """The exit status for a result: quarantine wins over plain acceptance."""
    if result.delivered and result.held:
        return EXIT_QUARANTINED
    return EXIT_CODES.get(result.decision, 2)


def _check(args: argparse.Namespace, data: bytes, macros: dict[str, str]) -> CheckResult:
    sender, recipients = args.sender, args.rcpt
    if sender is None or not recipients:
        from_sender, from_rcpts = envelope_from_headers(ParsedMessage.parse(data))
        sender = from_sender if sender is None else sender
        recipients = recipients or from_rcpts
    if not recipients:
        raise ValueError("no recipient: give --rcpt or a To:/Cc: header")
    options = ClientOptions(
        profile=PROFILES[args.profile],
        client=ClientInfo(args.client_ip or None, args.client_port, args.client_name, args.helo),
        macros=macros,
        timeout=args.timeout,
    )
    with MilterClient(args.socket, options=options) as client:
        return client.check(data, sender=sender, recipients=recipients)


def _error_status(exc: MilterError) -> int:
    if isinstance(exc, MilterAddressError):
        return EX_USAGE
    if isinstance(exc, MilterTimeout):
        return EX_TEMPFAIL
    if isinstance(exc, MilterProtocolError):
        return EX_PROTOCOL
    if isinstance(exc, MilterConnectionError):
        return EX_UNAVAILABLE
    return EX_UNAVAILABLE


def _fail(err: TextIO, status: int, message: str) -> int:
    with contextlib.suppress(OSError, ValueError, UnicodeError):
        print(encodable(f"milterkit check: {message}", getattr(err, "encoding", None)), file=err)
    return status


def _parse_macros(specs: Iterable[str]) -> dict[str, str]:
    macros = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        if not sep or not name:
            raise ValueError(f"--macro {spec!r}: expected NAME=VALUE, e.g. {{auth_authen}}=alice")
        macros[name] = value
    return macros


def _read_message(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    return Path(path).read_bytes()


# ------------------------------------------------------------------- rendering


def render(result: CheckResult, address: str) -> str:
    """The human-readable report: negotiation, a stage table, the outcome."""
    lines = [f"filter       {printable(address)} (as {result.profile})"]
    lines += _negotiation_lines(result)
    lines += ["", *_table(_grouped(result.stages))]
    lines += ["", *_outcome_lines(result)]
    return "\n".join(lines)


def _negotiation_lines(result: CheckResult) -> list[str]:
    neg = result.negotiated
    if neg is None:
        return ["negotiated   (nothing)"]
    lines = [
        f"version      {neg.version}",
        f"actions      0x{int(neg.actions):03x} {describe_flags(neg.actions, Action)}",
        f"protocol     0x{int(neg.protocol):06x} {describe_flags(neg.protocol, ProtocolFlag)}",
    ]
    for stage, names in sorted(neg.macros.items()):
        joined = printable(" ".join(n.decode("utf-8", "surrogateescape") for n in names))
        lines.append(f"macros[{stage}]    {joined}")
    return lines


def _grouped(stages: list[StageResult]) -> list[tuple[str, str, str, str]]:
    """Rows of the stage table; runs of equal header/body answers become one row."""
    rows: list[tuple[str, str, str, str]] = []
    count = 0
    for i, stage in enumerate(stages):
        reply = printable_reply(str(stage.reply)) if stage.reply else ""
        prev = stages[i - 1] if i else None
        same = prev is not None and (prev.stage, prev.decision, prev.reply) == (
            stage.stage,
            stage.decision,
            stage.reply,
        )
        if same and stage.stage in ("header", "body"):
            count += 1
            rows[-1] = (stage.stage, stage.decision, f"x{count}", reply)
            continue
        count = 1
        rows.append((stage.stage, stage.decision, printable(stage.detail), reply))
    return rows


def _table(rows: list[tuple[str, str, str, str]]) -> list[str]:
    header = ("STAGE", "DECISION", "DETAIL", "REPLY")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    indent = "\n" + " " * (sum(widths) + 6)  # multi-line replies stay in their column
    return [
        f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  "
        f"{r[3].replace(chr(13) + chr(10), indent)}".rstrip()
        for r in [header, *rows]
    ]


def _outcome_lines(result: CheckResult) -> list[str]:
    where = f" (at {result.decided_at})" if result.decided_at else ""
    lines = [f"decision     {result.decision}{where}"]
    if result.smtp_reply is not None:
        lines.append(f"smtp reply   {printable_reply(str(result.smtp_reply))}")
    if result.quarantine_reason is not None:
        lines.append(f"quarantine   {printable(result.quarantine_reason)}")
    for rcpt, reply in result.rejected_recipients.items():
        rcpt = printable(rcpt)
        text = printable_reply(str(reply)).replace("\r\n", "\n" + " " * (15 + len(rcpt)))
        lines.append(f"rejected     {rcpt}: {text}")
    lines.append(f"modifications {len(result.modifications)}")
    lines += [
        f"  {n}. {printable(describe_modification(m))}"
        for n, m in enumerate(result.modifications, 1)
    ]
    return lines
