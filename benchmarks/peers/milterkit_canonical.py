"""The canonical benchmark milter on milterkit.

Every step callback is overridden (returning None, i.e. continue), so the
negotiation asks the MTA for each step with a reply; end of message adds one
header and accepts.

``--style minimal`` runs the same filter written as most users would: only
``end_of_message`` is overridden, so milterkit negotiates the NO* bits (the
MTA skips those steps) for the rest.

``--style noreply`` is an experiment, not a way users write milters: the
canonical milter that also negotiates NR_HDR, NR_EOH and NR_BODY, so the MTA
does not wait for a reply to each header, end of headers and body chunk. Its
callbacks always continue, so nothing is lost by not replying; it measures
how much those round trips cost (benchmarks/postfix-analysis.md).

Usage: python milterkit_canonical.py PORT [--workers N] [--loop asyncio|uvloop]
       [--style canonical|minimal|noreply] [--execution auto|inline|threads]
"""

from __future__ import annotations

import sys

import milterkit
from milterkit import Accept, Action, Family, Milter, Response
from milterkit.protocol.constants import ProtocolFlag
from milterkit.protocol.messages import OptNeg
from milterkit.protocol.negotiate import build_filter_reply


class Canonical(Milter):
    actions = Action.ADD_HEADERS

    def connect(
        self, hostname: str, family: Family, address: str | None, port: int | None
    ) -> Response | None:
        return None

    def helo(self, name: str) -> Response | None:
        return None

    def mail_from(self, sender: str, params: list[str]) -> Response | None:
        return None

    def rcpt_to(self, recipient: str, params: list[str]) -> Response | None:
        return None

    def data(self) -> Response | None:
        return None

    def header(self, name: str, value: str) -> Response | None:
        return None

    def end_of_headers(self) -> Response | None:
        return None

    def body(self, chunk: bytes) -> Response | None:
        return None

    def end_of_message(self) -> Response | None:
        self.add_header("X-Bench", "milterkit")
        return Accept()


class Minimal(Milter):
    actions = Action.ADD_HEADERS

    def end_of_message(self) -> Response | None:
        self.add_header("X-Bench", "milterkit")
        return Accept()


class NoReply(Canonical):
    content_no_reply = ProtocolFlag.NR_HDR | ProtocolFlag.NR_EOH | ProtocolFlag.NR_BODY

    def negotiate(self, offer: OptNeg) -> OptNeg | None:
        cls = type(self)
        offered = self.content_no_reply & ProtocolFlag(offer.protocol)
        return build_filter_reply(
            offer,
            version=cls.version,
            actions=cls.actions,
            protocol=cls.wanted_protocol() | offered,
            macros=cls.macro_request(),
        )


STYLES: dict[str, type[Milter]] = {"canonical": Canonical, "minimal": Minimal, "noreply": NoReply}


def main() -> None:
    # plain sys.argv parsing: argparse (+gettext) would add ~0.3 MiB of RSS to
    # every worker, which is the script's cost, not the library's
    args = sys.argv[1:]
    options = dict(zip(args[1::2], args[2::2], strict=False))
    allowed = {"--workers", "--loop", "--style", "--execution"}
    if not args or set(options) - allowed or len(args) % 2 == 0:
        raise SystemExit(__doc__)
    style = options.get("--style", "canonical")
    if style not in STYLES:
        raise SystemExit(f"--style must be one of {', '.join(STYLES)}, not {style!r}")
    loop = options.get("--loop", "asyncio")
    if loop not in ("asyncio", "uvloop"):
        raise SystemExit(f"--loop must be asyncio or uvloop, not {loop!r}")
    # only when asked: a milterkit older than the execution model (--alt-src A/B runs)
    # has no such argument
    execution = {"execution": options["--execution"]} if "--execution" in options else {}
    raise SystemExit(
        milterkit.run(
            STYLES[style],
            f"inet:{int(args[0])}@127.0.0.1",
            workers=int(options.get("--workers", "1")),
            use_uvloop=loop == "uvloop",
            log_level="warning",
            **execution,  # type: ignore[arg-type]
        )
    )


if __name__ == "__main__":
    main()
