"""The canonical benchmark milter on milterkit.

Every step callback is overridden (returning None, i.e. continue), so the
negotiation asks the MTA for each step with a reply; end of message adds one
header and accepts.

Usage: python milterkit_canonical.py PORT [--workers N] [--loop asyncio|uvloop]
"""

from __future__ import annotations

import argparse

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int)
    parser.add_argument("--workers", type=int, default=1, help="worker processes (0: no fork)")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = parser.parse_args()
    raise SystemExit(
        milterkit.run(
            Canonical,
            f"inet:{args.port}@127.0.0.1",
            workers=args.workers,
            use_uvloop=args.loop == "uvloop",
            log_level="warning",
        )
    )


if __name__ == "__main__":
    main()
