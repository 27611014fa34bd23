"""DKIM signing and verification with dkimpy.

Mail from an internal network or an authenticated client, whose From domain
has a key, is signed (``DKIM-Signature`` prepended). All other mail is
verified: every signature is checked and one ``Authentication-Results``
header records the results; forged ``Authentication-Results`` carrying our
authserv-id are removed first.

    python -m milterkit.contrib.dkim --socket inet:8891@127.0.0.1 \\
        --key example.org:mail2026:/etc/dkim/example.org.pem --internal 192.0.2.0/24

dkimpy does the cryptography and DNS (through dnspython); it must be
installed (``pip install dkimpy``): milterkit itself does not depend on it.
"""

from __future__ import annotations

import argparse
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.utils import getaddresses
from pathlib import Path

import dkim  # type: ignore[import-untyped]
import dkim.dnsplug  # type: ignore[import-untyped]

from milterkit.contrib._common import (
    HeaderRecordingMilter,
    Network,
    filter_parser,
    header_block,
    in_networks,
    main_with_settings,
    network_argument,
    networks,
)
from milterkit.milter import Continue, Response
from milterkit.protocol.constants import Action, Family, ProtocolFlag

DEFAULT_SIGNED_HEADERS = (
    "from,to,cc,subject,date,message-id,reply-to,in-reply-to,references,"
    "mime-version,content-type,content-transfer-encoding"
)
CANONICALIZATIONS = ("relaxed/relaxed", "relaxed/simple", "simple/relaxed", "simple/simple")
TxtLookup = Callable[..., "bytes | None"]


@dataclass(frozen=True)
class SigningKey:
    """One signing domain: its selector and PEM private key."""

    domain: str
    selector: str
    private_key: bytes


@dataclass
class DkimSettings:
    """Everything the filter needs; built from the command line by :func:`settings_from_args`."""

    keys: dict[str, SigningKey] = field(default_factory=dict)
    signed_headers: tuple[str, ...] = tuple(DEFAULT_SIGNED_HEADERS.split(","))
    canonicalization: str = "relaxed/simple"
    internal: tuple[Network, ...] = networks(["127.0.0.0/8", "::1/128"])
    authserv_id: str = field(default_factory=socket.getfqdn)
    #: TXT lookup for verification; dkimpy's DNS resolver when None.
    txt_lookup: TxtLookup | None = None


class DkimMilter(HeaderRecordingMilter):
    """Signs mail from internal or authenticated senders, verifies everything else."""

    actions = Action.ADD_HEADERS | Action.CHANGE_HEADERS
    macros = {"mail": ["{auth_authen}"]}  # noqa: RUF012 (the request; Milter types it)
    leading_space = True  # headers exactly as received: "simple" header canonicalization
    collect_body = True
    max_body_bytes = 32 * 1024 * 1024

    def __init__(self, settings: DkimSettings) -> None:
        super().__init__()
        self.settings = settings
        self.client: str | None = None
        self.authenticated = False

    def connect(
        self, hostname: str, family: Family, address: str | None, port: int | None
    ) -> Response:
        self.client = address
        return Continue()

    def start_message(self) -> None:
        super().start_message()
        self.authenticated = bool(self.macro_values.get("{auth_authen}"))

    def end_of_message(self) -> Response:
        message = header_block(self.headers, leading_space=self.verbatim_headers())
        message += self.body_bytes
        key = self.signing_key()
        if key is not None:
            self.sign(message, key)
        else:
            self.verify(message)
        return Continue()

    def verbatim_headers(self) -> bool:
        """Did the MTA grant HDR_LEADSPC? Without it, it strips (and adds) the space after ':'."""
        return bool(self.negotiated.protocol & ProtocolFlag.HDR_LEADSPC)

    # ------------------------------------------------------------------ signing

    def signing_key(self) -> SigningKey | None:
        """The key to sign with: outgoing mail (internal or authenticated) of a keyed domain."""
        if not (self.authenticated or in_networks(self.client, self.settings.internal)):
            return None
        domain = from_domain(self.headers)
        return self.settings.keys.get(domain) if domain else None

    def sign(self, message: bytes, key: SigningKey) -> None:
        header_c, body_c = self.settings.canonicalization.split("/")
        try:
            signature = dkim.sign(
                message,
                key.selector.encode(),
                key.domain.encode(),
                key.private_key,
                canonicalize=(header_c.encode(), body_c.encode()),
                include_headers=[h.encode() for h in self.settings.signed_headers],
            )
        except dkim.DKIMException as exc:
            self.log.error("DKIM signing for %s failed: %s", key.domain, exc)
            return
        name, _, value = signature.decode("ascii").partition(":")
        if not self.verbatim_headers():
            value = value.lstrip(" \t")  # the MTA puts one space after the colon itself
        self.insert_header(name, value.rstrip("\r\n"), 0)
        self.log.info("signed for d=%s s=%s", key.domain, key.selector)

    # ------------------------------------------------------------- verification

    def verify(self, message: bytes) -> None:
        self.remove_forged_results()
        count = sum(1 for name, _ in self.headers if name.lower() == "dkim-signature")
        results = [self.verify_one(message, index) for index in range(count)] or ["dkim=none"]
        value = f" {self.settings.authserv_id};\n\t" + ";\n\t".join(results)
        self.insert_header("Authentication-Results", value, 0)

    def verify_one(self, message: bytes, index: int) -> str:
        """``dkim=pass|fail|temperror|permerror`` with the d=/s= of signature ``index``."""
        verifier = dkim.DKIM(message)
        lookup = self.settings.txt_lookup
        try:
            ok = verifier.verify(idx=index, **({"dnsfunc": lookup} if lookup else {}))
        except dkim.DnsTimeoutError as exc:
            self.log.warning("DKIM key lookup failed: %s", exc)
            return f"dkim=temperror reason={quote(str(exc))}"
        except dkim.ValidationError as exc:
            if not str(exc).startswith("body hash mismatch"):
                return f"dkim=permerror reason={quote(str(exc))}"
            return f'dkim=fail reason="body hash mismatch" {identity(verifier)}'
        except dkim.DKIMException as exc:
            return f"dkim=permerror reason={quote(str(exc))}"
        if not ok and not self.key_published(verifier):
            return f'dkim=permerror reason="no key published" {identity(verifier)}'
        return f"dkim={'pass' if ok else 'fail'} {identity(verifier)}"

    def key_published(self, verifier: dkim.DKIM) -> bool:
        """Is there a key record for the failed signature? (dkimpy says False either way.)"""
        fields = verifier.signature_fields or {}
        name = b"%s._domainkey.%s." % (fields.get(b"s", b""), fields.get(b"d", b""))
        try:
            return bool(
                self.settings.txt_lookup(name)
                if self.settings.txt_lookup
                else dkim.dnsplug.get_txt(name)
            )
        except dkim.DnsTimeoutError:
            return True  # unknown: keep the "fail"

    def remove_forged_results(self) -> None:
        """Delete incoming Authentication-Results that claim to be ours (RFC 8601 §5)."""
        ours = self.settings.authserv_id.lower()
        results = [v for n, v in self.headers if n.lower() == "authentication-results"]
        for index in range(len(results), 0, -1):  # last first: indexes stay valid
            if results[index - 1].strip().split(";", 1)[0].strip().lower() == ours:
                self.change_header("Authentication-Results", "", index)


def identity(verifier: dkim.DKIM) -> str:
    """``header.d=... header.s=...`` of the signature just checked."""
    fields = verifier.signature_fields or {}
    domain = fields.get(b"d", b"").decode("ascii", "replace")
    selector = fields.get(b"s", b"").decode("ascii", "replace")
    return f"header.d={domain} header.s={selector}"


def from_domain(headers: Sequence[tuple[str, str]]) -> str | None:
    """The domain of the (first) From address, lower case; None without one."""
    for name, value in headers:
        if name.lower() == "from":
            addresses = getaddresses([value])
            if addresses and "@" in addresses[0][1]:
                return addresses[0][1].rpartition("@")[2].lower().rstrip(">")
            return None
    return None


def quote(text: str) -> str:
    """An RFC 8601 ``reason=`` value: a quoted string without quotes or line breaks inside."""
    cleaned = " ".join(text.replace('"', "'").replace("\\", "/").split())
    return f'"{cleaned}"'


# ----------------------------------------------------------------- settings


def key_argument(value: str) -> SigningKey:
    """``DOMAIN:SELECTOR:PATH`` → a :class:`SigningKey` (the key file is read now)."""
    parts = value.split(":", 2)
    if len(parts) != 3 or not all(parts):
        raise argparse.ArgumentTypeError(f"{value!r} is not DOMAIN:SELECTOR:KEYFILE")
    domain, selector, path = parts
    try:
        pem = Path(path).read_bytes()
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot read key file {path}: {exc.strerror}") from None
    if b"PRIVATE KEY" not in pem:
        raise argparse.ArgumentTypeError(f"{path} holds no PEM private key")
    return SigningKey(domain.lower(), selector, pem)


def txt_file_lookup(path: str) -> TxtLookup:
    """TXT records from a file, ``NAME TEXT`` per line, instead of DNS (closed networks, tests)."""
    records: dict[str, bytes] = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, txt = line.partition(" ")
        if not txt.strip():
            raise ValueError(f"{path}:{number}: expected 'NAME TXT-VALUE', got {line!r}")
        records[name.rstrip(".").lower()] = txt.strip().encode()
    return txt_lookup_from(records)


def txt_lookup_from(records: dict[str, bytes]) -> TxtLookup:
    """A dkimpy ``dnsfunc`` answering from ``records`` (name → TXT), None for other names."""
    table = {name.rstrip(".").lower(): value for name, value in records.items()}

    def lookup(name: bytes | str, timeout: float = 5) -> bytes | None:
        key = name.decode() if isinstance(name, bytes) else name
        return table.get(key.rstrip(".").lower())

    return lookup


def build_parser() -> argparse.ArgumentParser:
    parser = filter_parser("python -m milterkit.contrib.dkim", __doc__.split("\n\n")[0])
    dk = parser.add_argument_group("DKIM")
    dk.add_argument(
        "--key",
        action="append",
        type=key_argument,
        default=[],
        metavar="DOMAIN:SELECTOR:KEYFILE",
        help="sign mail From this domain with this PEM key (repeatable)",
    )
    dk.add_argument(
        "--sign-headers",
        default=DEFAULT_SIGNED_HEADERS,
        help="comma-separated header names to sign",
    )
    dk.add_argument(
        "--canonicalization",
        choices=CANONICALIZATIONS,
        default="relaxed/simple",
        help="header/body canonicalization of signatures",
    )
    dk.add_argument(
        "--internal",
        action="append",
        type=network_argument,
        metavar="CIDR",
        help="clients whose mail is signed, not verified (repeatable; "
        "default 127.0.0.0/8 and ::1); authenticated clients always are",
    )
    dk.add_argument(
        "--authserv-id", default=socket.getfqdn(), help="the host name in Authentication-Results"
    )
    dk.add_argument(
        "--txt-file",
        metavar="PATH",
        help="look DKIM keys up in this file (NAME TXT per line) instead of DNS",
    )
    return parser


def settings_from_args(args: argparse.Namespace) -> DkimSettings:
    settings = DkimSettings(
        keys={key.domain: key for key in args.key},
        signed_headers=tuple(h.strip().lower() for h in args.sign_headers.split(",") if h.strip()),
        canonicalization=args.canonicalization,
        authserv_id=args.authserv_id,
        txt_lookup=txt_file_lookup(args.txt_file) if args.txt_file else None,
    )
    if args.internal:
        settings.internal = tuple(args.internal)
    if "from" not in settings.signed_headers:
        raise ValueError("--sign-headers must include 'from' (RFC 6376 §5.4)")
    return settings


def main(argv: Sequence[str] | None = None) -> int:
    return main_with_settings(argv, build_parser(), settings_from_args, DkimMilter)


if __name__ == "__main__":
    sys.exit(main())
