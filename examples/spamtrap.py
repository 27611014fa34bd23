"""SpamTrap: quarantine mail from a known spammer, stamp every message.

Run it::

    milterkit run examples/spamtrap.py:SpamTrap --socket inet:8890@127.0.0.1
    python examples/spamtrap.py --socket unix:/run/spamtrap.sock --user postfix

Only ``mail_from`` and ``end_of_message`` are overridden, so the MTA is told
not to send connect, HELO, recipients, headers or body at all.
"""

from __future__ import annotations

import argparse
import re
import sys

from milterkit.decision import Decision
from milterkit.milter import Milter, Response
from milterkit.protocol.constants import Action
from milterkit.runtime import run

SPAMMER = re.compile(r"spameri@tiscali\.it", re.IGNORECASE)


class SpamTrap(Milter):
    """The DESIGN.md sketch: quarantine at MAIL (queued for EOM), X-Checked at EOM."""

    actions = Action.QUARANTINE | Action.ADD_HEADERS
    macros = {"mail": ["{auth_authen}"]}

    async def mail_from(self, sender: str, params: list[str]) -> Response:
        if SPAMMER.search(sender):
            # Modifications are only legal at end of message; milterkit queues it.
            self.quarantine("Spammer in quarantine!")
        return Decision.CONTINUE

    def end_of_message(self) -> Response:
        self.add_header("X-Checked", "yes")
        return Decision.ACCEPT


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", default="inet:8890@127.0.0.1")
    parser.add_argument("--user")
    parser.add_argument("--group")
    parser.add_argument("--pid-file")
    parser.add_argument("--workers", type=int)
    args = parser.parse_args(argv)
    return run(
        SpamTrap,
        args.socket,
        user=args.user,
        group=args.group,
        pid_file=args.pid_file,
        workers=args.workers,
    )


if __name__ == "__main__":
    sys.exit(main())
