"""Attachment policy: reject or strip attachments by file extension, MIME type and size.

The body is collected (spooled to a temporary file past 1 MiB), parsed with
the standard library's :mod:`email` package at end of message, and:

* a part that matches a *reject* rule refuses the whole message (550 5.7.1,
  naming the file);
* a part that matches a *strip* rule is replaced by a short text/plain note
  and the body is replaced; every other part, boundary, preamble and
  epilogue is written back as it came.

    python -m milterkit.contrib.attachments --socket inet:8892@127.0.0.1 \\
        --reject-extension exe,scr,js --strip-type 'application/x-msdownload' \\
        --max-attachment-size 10485760

Messages that are not changed are not rewritten at all.
"""

from __future__ import annotations

import argparse
import email.policy
import email.utils
import fnmatch
import io
import sys
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from email.generator import BytesGenerator
from email.header import decode_header, make_header
from email.message import Message
from email.mime.text import MIMEText
from email.parser import BytesParser

from milterkit.contrib._common import HeaderRecordingMilter, filter_parser, header_block, serve
from milterkit.milter import Continue, ReplyCode, Response
from milterkit.protocol.constants import Action

ZIP_TYPES = ("application/zip", "application/x-zip-compressed", "application/x-zip")
MAX_ZIP_MEMBERS = 10_000  # names looked at per archive

#: compat32 keeps header text as it came; CRLF like the MTA; no re-folding.
POLICY = email.policy.compat32.clone(linesep="\r\n", max_line_length=0)


@dataclass
class AttachmentSettings:
    """The policy; every list holds lower-case extensions (no dot) or type patterns."""

    reject_extensions: frozenset[str] = frozenset()
    strip_extensions: frozenset[str] = frozenset()
    reject_types: tuple[str, ...] = ()
    strip_types: tuple[str, ...] = ()
    #: Attachments larger than this (decoded bytes) are stripped; None: no limit.
    max_attachment_size: int | None = None
    note: str = (
        "The attachment {name} ({type}, {size} bytes) was removed by the mail filter: {reason}."
    )
    max_body_bytes: int = 32 * 1024 * 1024
    #: Apply the extension rules to the file names inside ZIP attachments too.
    look_inside_zip: bool = False


@dataclass(frozen=True)
class Verdict:
    """What the policy says about one part: "reject", "strip" or "keep", and why."""

    action: str
    reason: str = ""


KEEP = Verdict("keep")


class AttachmentPolicy(HeaderRecordingMilter):
    """Applies :class:`AttachmentSettings` to every MIME leaf part of a message."""

    actions = Action.CHANGE_BODY | Action.CHANGE_HEADERS | Action.ADD_HEADERS
    collect_body = True
    max_body_bytes = 32 * 1024 * 1024

    def __init__(self, settings: AttachmentSettings) -> None:
        super().__init__()
        self.settings = settings

    def end_of_message(self) -> Response:
        self.body_file.seek(0)
        parser = BytesParser(policy=POLICY)
        message = parser.parse(io.BytesIO(header_block(self.headers) + self.body_file.read()))
        stripped = 0
        for container, index, part in leaves(message):
            verdict = self.judge(part)
            if verdict.action == "reject":
                self.log.info("rejected: %s: %s", describe(part), verdict.reason)
                return ReplyCode(
                    550,
                    f"attachment {printable(filename(part))} refused: {verdict.reason}",
                    "5.7.1",
                )
            if verdict.action == "strip":
                self.log.info("stripped: %s: %s", describe(part), verdict.reason)
                self.strip(message, container, index, part, verdict.reason)
                stripped += 1
        if stripped:
            self.replace_body(body_of(message))
            self.add_header("X-Attachments-Stripped", str(stripped))
        return Continue()

    def judge(self, part: Message) -> Verdict:
        """Reject rules first, then strip rules, then the size limit."""
        name = filename(part)
        ext = extension(name)
        ctype = part.get_content_type()
        s = self.settings
        if ext and ext in s.reject_extensions:
            return Verdict("reject", f"files of type .{ext} are not accepted")
        if matches(ctype, s.reject_types):
            return Verdict("reject", f"{ctype} is not accepted")
        if ext and ext in s.strip_extensions:
            return Verdict("strip", f"files of type .{ext} are not accepted")
        if matches(ctype, s.strip_types):
            return Verdict("strip", f"{ctype} is not accepted")
        if s.max_attachment_size is not None and name is not None:
            size = decoded_size(part)
            if size > s.max_attachment_size:
                return Verdict("strip", f"larger than {s.max_attachment_size} bytes")
        if s.look_inside_zip and (ext == "zip" or ctype in ZIP_TYPES):
            return self.judge_zip(part)
        return KEEP

    def judge_zip(self, part: Message) -> Verdict:
        """The extension rules applied to the names inside a ZIP archive (one level)."""
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                names = [info.filename for info in archive.infolist()[:MAX_ZIP_MEMBERS]]
        except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError) as exc:
            self.log.info("%s: not a readable ZIP archive (%s); kept", describe(part), exc)
            return KEEP
        s = self.settings
        for rules, action in ((s.reject_extensions, "reject"), (s.strip_extensions, "strip")):
            for member in names:
                ext = extension(member)
                if ext and ext in rules:
                    inner = printable(member)
                    return Verdict(action, f"the archive holds {inner}: .{ext} is not accepted")
        return KEEP

    def strip(
        self, message: Message, container: Message | None, index: int, part: Message, why: str
    ) -> None:
        """Put a text note where ``part`` was (for the root: change its headers too)."""
        note = self.settings.note.format(
            name=printable(filename(part)),
            type=part.get_content_type(),
            size=decoded_size(part),
            reason=why,
        )
        replacement = MIMEText(note + "\r\n", "plain", "utf-8")
        if container is not None:
            payload = container.get_payload()
            assert isinstance(payload, list)
            payload[index] = replacement
            return
        # The whole message is the attachment: its top-level headers describe it.
        for name in ("Content-Disposition", "Content-Transfer-Encoding", "Content-Description"):
            for index in range(len(message.get_all(name) or []), 0, -1):
                self.change_header(name, "", index)  # last first: indexes stay valid
        self.change_header("Content-Type", 'text/plain; charset="utf-8"')
        self.add_header("Content-Transfer-Encoding", "base64")
        message.set_payload(replacement.get_payload())


def leaves(message: Message) -> Iterator[tuple[Message | None, int, Message]]:
    """Every non-multipart part with its container and index (container None for the root).

    Attached messages (message/rfc822) are entered too. Parts are yielded
    before the walk reaches later siblings, so the caller may replace the
    yielded part in ``container``'s payload list.
    """
    if not message.is_multipart():
        yield None, 0, message
        return
    stack: list[Message] = [message]
    while stack:
        container = stack.pop()
        payload = container.get_payload()
        assert isinstance(payload, list)
        for index, part in enumerate(list(payload)):
            if part.is_multipart():
                stack.append(part)
            else:
                yield container, index, part


def filename(part: Message) -> str | None:
    """The file name (RFC 2231 parameters, and RFC 2047 words as Outlook writes them)."""
    name = part.get_filename() or part.get_param("name")
    if name is None:
        return None
    if isinstance(name, tuple):  # an RFC 2231 value get_param did not collapse
        name = email.utils.collapse_rfc2231_value(name)
    try:
        return str(make_header(decode_header(str(name))))
    except (LookupError, UnicodeDecodeError, ValueError):
        return str(name)


def extension(name: str | None) -> str | None:
    """The last extension, lower case; trailing dots and blanks (a Windows trick) ignored."""
    if not name:
        return None
    stem = name.rstrip(". \t").rsplit("/", 1)[-1].rsplit("\\", 1)[-1]
    if "." not in stem:
        return None
    return stem.rsplit(".", 1)[1].lower()


def matches(content_type: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(content_type, p) for p in patterns)


def decoded_size(part: Message) -> int:
    payload = part.get_payload(decode=True)
    return len(payload) if isinstance(payload, bytes) else 0


def printable(name: str | None) -> str:
    """A file name safe in an SMTP reply and a log line: quoted, ASCII, bounded."""
    if name is None:
        return "(unnamed)"
    safe = "".join(c if 32 <= ord(c) < 127 and c != '"' else "?" for c in name)
    return f'"{safe[:100]}"'


def describe(part: Message) -> str:
    return f"{printable(filename(part))} {part.get_content_type()}"


def body_of(message: Message) -> bytes:
    """The message as BytesGenerator writes it, less the header section."""
    out = io.BytesIO()
    BytesGenerator(out, mangle_from_=False, policy=POLICY).flatten(message)
    _, sep, body = out.getvalue().partition(b"\r\n\r\n")
    return body if sep else b""


# ------------------------------------------------------------------- settings


def word_list(value: str) -> list[str]:
    return [w.strip().lower().lstrip(".") for w in value.split(",") if w.strip()]


def type_list(value: str) -> list[str]:
    types = [w.strip().lower() for w in value.split(",") if w.strip()]
    for t in types:
        if "/" not in t:
            raise argparse.ArgumentTypeError(f"{t!r} is not a MIME type like application/zip")
    return types


def size(value: str) -> int:
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    number, unit = (value[:-1], value[-1].lower()) if value[-1:].isalpha() else (value, "")
    try:
        result = int(number) * units[unit] if unit else int(number)
    except (KeyError, ValueError):
        raise argparse.ArgumentTypeError(f"{value!r} is not a size like 10485760 or 10M") from None
    if result <= 0:
        raise argparse.ArgumentTypeError(f"{value!r} must be positive")
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = filter_parser("python -m milterkit.contrib.attachments", __doc__.split("\n\n")[0])
    p = parser.add_argument_group("policy (lists are comma-separated; options repeat)")
    p.add_argument(
        "--reject-extension",
        type=word_list,
        action="extend",
        default=[],
        metavar="EXT,...",
        help="refuse messages with such a file, e.g. exe,scr,js",
    )
    p.add_argument(
        "--strip-extension",
        type=word_list,
        action="extend",
        default=[],
        metavar="EXT,...",
        help="replace such files by a note",
    )
    p.add_argument(
        "--reject-type",
        type=type_list,
        action="extend",
        default=[],
        metavar="TYPE,...",
        help="refuse messages with parts of this MIME type (shell patterns: application/x-*)",
    )
    p.add_argument(
        "--strip-type",
        type=type_list,
        action="extend",
        default=[],
        metavar="TYPE,...",
        help="replace parts of this MIME type by a note",
    )
    p.add_argument(
        "--max-attachment-size",
        type=size,
        metavar="BYTES",
        help="replace named attachments larger than this (decoded; 10M works)",
    )
    p.add_argument(
        "--max-message-size",
        type=size,
        default=32 * 1024 * 1024,
        metavar="BYTES",
        help="bodies larger than this get the --error-decision (they are parsed in memory)",
    )
    p.add_argument(
        "--look-inside-zip",
        action="store_true",
        help="apply the extension rules to the names inside ZIP attachments too "
        "(one level; the whole archive is refused or stripped)",
    )
    return parser


def settings_from_args(args: argparse.Namespace) -> AttachmentSettings:
    return AttachmentSettings(
        reject_extensions=frozenset(args.reject_extension),
        strip_extensions=frozenset(args.strip_extension),
        reject_types=tuple(args.reject_type),
        strip_types=tuple(args.strip_type),
        max_attachment_size=args.max_attachment_size,
        max_body_bytes=args.max_message_size,
        look_inside_zip=args.look_inside_zip,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = settings_from_args(args)
    # Limits are class attributes: a subclass carries this deployment's value.
    configured = type(
        "AttachmentPolicy", (AttachmentPolicy,), {"max_body_bytes": settings.max_body_bytes}
    )
    return serve(lambda: configured(settings), args)


if __name__ == "__main__":
    sys.exit(main())
