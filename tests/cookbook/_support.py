"""Helpers of the cookbook tests: run a contrib filter as a daemon, wire Postfix to it."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator, Sequence

import pytest

from ..e2e.harness import MilterAddress, MilterProcess
from ..realmta._util import Unavailable
from ..realmta.postfix import PostfixInstance
from ..realmta.sendmail import SendmailInstance


@contextlib.contextmanager
def contrib_filter(module: str, *options: str) -> Iterator[MilterProcess]:
    """``python -m milterkit.contrib.MODULE --socket inet:... OPTIONS``, one worker."""
    address = MilterAddress.new("inet")
    argv = [
        "-m", f"milterkit.contrib.{module}", "--socket", address.milterkit,
        "--workers", "1", "--drain-timeout", "2", *options,
    ]  # fmt: skip
    with MilterProcess(f"contrib.{module}", address, script=argv) as milter:
        yield milter


@contextlib.contextmanager
def postfix_with(milters: Sequence[MilterProcess], **kwargs: object) -> Iterator[PostfixInstance]:
    """A started private Postfix using ``milters`` for SMTP and pickup; skips without Postfix."""
    spec = ", ".join(m.address.postfix for m in milters)
    try:
        instance = PostfixInstance(milters=spec, non_smtpd_milters=spec, **kwargs)  # type: ignore[arg-type]
    except Unavailable as exc:
        pytest.skip(f"postfix unavailable: {exc}")
    with instance:
        yield instance


def need_program(name: str, package: str) -> str:
    """The path of ``name``, or skip naming the Debian package that provides it."""
    path = shutil.which(name) or (
        f"/usr/sbin/{name}" if shutil.which(f"/usr/sbin/{name}") else None
    )
    if path is None:
        pytest.skip(
            f"{name} not installed (apt-get install {package}; scripts/install-system-deps)"
        )
    return path


@contextlib.contextmanager
def sendmail_with(milter: MilterProcess) -> Iterator[SendmailInstance]:
    """A started private Sendmail using ``milter`` (F=T); skips without Sendmail."""
    try:
        instance = SendmailInstance(milter=milter.address.sendmail)
    except Unavailable as exc:
        pytest.skip(f"sendmail unavailable: {exc}")
    with instance:
        yield instance
