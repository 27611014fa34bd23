"""HeaderStamp: add a header, tag the Subject, and do it with async callbacks.

Shows connection state on ``self`` (the client address from ``connect``),
message state reset in ``mail_from``, an ``await`` inside a callback (a real
filter would query DNS or a reputation service here; milterkit pauses reading
from that MTA connection meanwhile and keeps serving the others), and the
header-index rule of CHGHEADER (the n-th header of that name, from 1).

    milterkit run examples/header_stamp.py:HeaderStamp --socket inet:8891@127.0.0.1
"""

from __future__ import annotations

import asyncio
import sys

from milterkit.decision import Decision
from milterkit.milter import Milter, Response
from milterkit.protocol.constants import Action, Family
from milterkit.runtime import run


async def reputation(address: str | None) -> str:
    """Stand-in for a network lookup."""
    await asyncio.sleep(0)
    return "local" if address in (None, "127.0.0.1", "::1") else "remote"


class HeaderStamp(Milter):
    actions = Action.ADD_HEADERS | Action.CHANGE_HEADERS

    client: str | None = None
    subject: str | None = None

    def connect(
        self, hostname: str, family: Family, address: str | None, port: int | None
    ) -> Response:
        self.client = address
        return Decision.CONTINUE

    def mail_from(self, sender: str, params: list[str]) -> Response:
        self.subject = None  # message state starts over with every MAIL
        return Decision.CONTINUE

    def header(self, name: str, value: str) -> Response:
        if name.lower() == "subject" and self.subject is None:
            self.subject = value
        return Decision.CONTINUE

    async def end_of_message(self) -> Response:
        origin = await reputation(self.client)
        self.add_header("X-Stamped-By", f"milterkit header_stamp ({origin})")
        if self.subject is not None and not self.subject.lstrip().startswith("[stamped]"):
            self.change_header("Subject", f"[stamped] {self.subject.lstrip()}")
        return Decision.CONTINUE


if __name__ == "__main__":
    sys.exit(run(HeaderStamp, sys.argv[1] if len(sys.argv) > 1 else "inet:8891@127.0.0.1"))
