"""Fixtures for real-MTA tests: private MTAs and the libmilter reference filter.

Each fixture skips (naming what is missing) instead of failing when the MTA
or toolchain is absent, so the suite stays green on machines without
``scripts/install-system-deps``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from ..ref import build as ref_build
from ._util import Unavailable, free_port
from .postfix import PostfixInstance
from .sendmail import SendmailInstance


@dataclass(frozen=True)
class RefFilter:
    """A running reference filter and its address in each MTA's syntax."""

    port: int

    @property
    def libmilter_spec(self) -> str:
        return f"inet:{self.port}@127.0.0.1"

    sendmail_spec = libmilter_spec

    @property
    def postfix_spec(self) -> str:
        return f"inet:127.0.0.1:{self.port}"


@pytest.fixture
def ref_filter() -> Iterator[RefFilter]:
    """The C reference filter listening on a free loopback port."""
    try:
        ref_build.build_ref_filter()  # cached; running_ref_filter reuses it
    except ref_build.Unavailable as exc:
        pytest.skip(f"reference filter unavailable: {exc}")
    port = free_port()
    with ref_build.running_ref_filter(f"inet:{port}@127.0.0.1"):
        yield RefFilter(port)


@pytest.fixture
def postfix() -> Iterator[PostfixInstance]:
    """A started private Postfix without milters."""
    try:
        instance = PostfixInstance()
    except Unavailable as exc:
        pytest.skip(f"postfix unavailable: {exc}")
    with instance:
        yield instance


@pytest.fixture
def sendmail() -> Iterator[SendmailInstance]:
    """A started private Sendmail without milters."""
    try:
        instance = SendmailInstance()
    except Unavailable as exc:
        pytest.skip(f"sendmail unavailable: {exc}")
    with instance:
        yield instance
