"""libMilterPHP's sample milter, ported with milterkit.compat.libmilterphp.

The PHP original (libMilterPHP README, "Sample milter") line by line: the
three callbacks keep their names, message arrays and reply arrays. Run as a
script it takes ``--socket ADDR --user U --group G --pid-file P`` to override
the hard-coded defaults ("miltertestuser", "mail", "/run/daemon.pid",
"unix:/run/daemon.sock", process limit 1024)::

    python examples/libmilterphp_sample.py --socket inet:8892@127.0.0.1 --user nobody
"""

from __future__ import annotations

import argparse
import re
import sys

from milterkit.compat.libmilterphp import (
    SMFIF_QUARANTINE,
    SMFIP_NOBODY,
    SMFIP_NOCONNECT,
    SMFIP_NOEOH,
    SMFIP_NOHDRS,
    SMFIP_NOHELO,
    SMFIP_NORCPT,
    SMFIR_CONTINUE,
    SMFIR_QUARANTINE,
    MessageArray,
    Milter,
)


class MilterTestDaemon(Milter):
    """Milter test daemon."""

    def smficAbort(self, message: MessageArray) -> None:  # noqa: N802
        """SMFIC_ABORT - Abort current filter checks."""
        # No-op

    def smficMail(self, message: MessageArray) -> None:  # noqa: N802
        """SMFIC_MAIL - MAIL FROM: information - use SMFIP_NOMAIL to suppress."""
        # Mark this email for quarantine
        if re.search(r"spameri@tiscali\.it", str(message["args"][0]), re.IGNORECASE):
            reply = {"command": SMFIR_QUARANTINE, "data": {"reason": "Spammer in quarantine!"}}
        else:
            reply = {"command": SMFIR_CONTINUE, "data": {}}
        self.reply(reply)

        # Since SMFIR_QUARANTINE is a "Modification" action, the MTA is waiting for
        # further commands... So continue processing. (milterkit keeps the quarantine
        # until end of message, the only place the protocol allows it.)
        reply = {"command": SMFIR_CONTINUE, "data": {}}
        self.reply(reply)

    def smficBodyeob(self, message: MessageArray) -> None:  # noqa: N802
        """SMFIC_BODYEOB - End of body marker."""
        # Default reply
        reply = {
            # Set the command (char)
            "command": SMFIR_CONTINUE,
            # Set the data
            "data": {},
        }
        self.reply(reply)


def build(
    user: str | None = "miltertestuser",
    group: str | None = "mail",
    pid_file: str | None = "/run/daemon.pid",
    connection_string: str = "unix:/run/daemon.sock",
) -> MilterTestDaemon:
    """Create milter object (the PHP sample's constructor call)."""
    return MilterTestDaemon(
        user,  # Effective user owner
        group,  # Effective group owner
        pid_file,  # PID file
        1024,  # Process limit
        connection_string,  # Connection string ("unix:/path/to/file.sock" or "inet:port@IP")
        [SMFIF_QUARANTINE],  # Supported actions (list of SMFIF_* constants)
        [  # Ignored content (list of SMFIP_* constants)
            SMFIP_NOCONNECT,
            SMFIP_NOHELO,
            SMFIP_NORCPT,
            SMFIP_NOBODY,
            SMFIP_NOHDRS,
            SMFIP_NOEOH,
        ],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="libMilterPHP sample milter on milterkit")
    parser.add_argument("--socket", default="unix:/run/daemon.sock")
    parser.add_argument("--user", default="miltertestuser", help='"" keeps the current user')
    parser.add_argument("--group", default="mail")
    parser.add_argument("--pid-file", default="/run/daemon.pid", help='"" for none')
    parser.add_argument("--workers", type=int)
    args = parser.parse_args(argv)
    milter = build(args.user, args.group, args.pid_file, args.socket)
    # Accept connections
    return milter.accept_connections(workers=args.workers)


if __name__ == "__main__":
    sys.exit(main())
