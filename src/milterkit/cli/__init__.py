"""``milterkit`` command line: run | check | ping | bench | demo.

Each subcommand lives in its own module with ``add_parser(subparsers)``, which
registers its options and sets ``func``; they are imported only when the
command line is parsed, so ``milterkit run`` does not pay for the client.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from milterkit import __version__

SUBCOMMANDS = ("run", "check", "ping", "bench", "demo")


#: sysexits.h EX_USAGE: what a usage error exits with (argparse's own default is 2,
#: which ``milterkit check`` uses for "tempfailed").
EX_USAGE = 64


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors exiting 64, for every subcommand's parser too."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f"{self.prog}: error: {message}\n")


class _VersionAction(argparse.Action):
    """``--version``: the version and whether the compiled modules are loaded."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        from milterkit._compiled import build_description

        print(f"milterkit {__version__} ({build_description()})")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="milterkit",
        description="Run, check and load-test milters (Sendmail/Postfix mail filters).",
    )
    parser.add_argument("--version", action=_VersionAction, help="show the version and build")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"milterkit.cli.{name}")
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return EX_USAGE
    status: int = args.func(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
