"""The canonical benchmark milter on milterkit.

Every step callback is overridden (returning None, i.e. continue), so the
negotiation asks the MTA for each step with a reply; end of message adds one
header and accepts.

``--style minimal`` runs the same filter written as most users would: only
``end_of_message`` is overridden, so milterkit negotiates the NO* bits (the
MTA skips those steps) for the rest.

Usage: python milterkit_canonical.py PORT [--workers N] [--loop asyncio|uvloop]
       [--style canonical|minimal]
"""

from __future__ import annotations

import sys

import milterkit
from milterkit import Accept, Action, Decision, Family, Milter


class Canonical(Milter):
    actions = Action.ADD_HEADERS

    def connect(
        self, hostname: str, family: Family, address: str | None, port: int | None
    ) -> Decision | None:
        return None

    def helo(self, name: str) -> Decision | None:
        return None

    def mail_from(self, sender: str, params: list[str]) -> Decision | None:
        return None

    def rcpt_to(self, recipient: str, params: list[str]) -> Decision | None:
        return None

    def data(self) -> Decision | None:
        return None

    def header(self, name: str, value: str) -> Decision | None:
        return None

    def end_of_headers(self) -> Decision | None:
        return None

    def body(self, chunk: bytes) -> Decision | None:
        return None

    def end_of_message(self) -> Decision | None:
        self.add_header("X-Bench", "milterkit")
        return Accept()


class Minimal(Milter):
    actions = Action.ADD_HEADERS

    def end_of_message(self) -> Decision | None:
        self.add_header("X-Bench", "milterkit")
        return Accept()


def main() -> None:
    # plain sys.argv parsing: argparse (+gettext) would add ~0.3 MiB of RSS to
    # every worker, which is the script's cost, not the library's
    args = sys.argv[1:]
    options = dict(zip(args[1::2], args[2::2], strict=False))
    if not args or set(options) - {"--workers", "--loop", "--style"} or len(args) % 2 == 0:
        raise SystemExit(__doc__)
    style = options.get("--style", "canonical")
    if style not in ("canonical", "minimal"):
        raise SystemExit(f"--style must be canonical or minimal, not {style!r}")
    loop = options.get("--loop", "asyncio")
    if loop not in ("asyncio", "uvloop"):
        raise SystemExit(f"--loop must be asyncio or uvloop, not {loop!r}")
    raise SystemExit(
        milterkit.run(
            Minimal if style == "minimal" else Canonical,
            f"inet:{int(args[0])}@127.0.0.1",
            workers=int(options.get("--workers", "1")),
            use_uvloop=loop == "uvloop",
            log_level="warning",
        )
    )


if __name__ == "__main__":
    main()
