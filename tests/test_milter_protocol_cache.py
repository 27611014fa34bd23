"""Milter.wanted_protocol is cached per class: the cache must never give a stale answer."""

from __future__ import annotations

from milterkit import Accept, Milter, Response
from milterkit.protocol.constants import ProtocolFlag


class OnlyEom(Milter):
    def end_of_message(self) -> Response | None:
        return Accept()


class WithHeader(OnlyEom):
    def header(self, name: str, value: str) -> Response | None:
        return None


def test_steps_not_overridden_are_turned_off_per_class() -> None:
    only_eom = OnlyEom.wanted_protocol()
    with_header = WithHeader.wanted_protocol()
    assert only_eom & ProtocolFlag.NOHDRS and only_eom & ProtocolFlag.NR_HDR
    assert not with_header & ProtocolFlag.NOHDRS and not with_header & ProtocolFlag.NR_HDR
    assert OnlyEom.wanted_protocol() == only_eom  # the cached answer is the same


def test_changed_class_settings_are_not_answered_from_the_cache() -> None:
    class Collecting(OnlyEom):
        pass

    assert Collecting.wanted_protocol() & ProtocolFlag.NOBODY
    Collecting.collect_body = True
    assert not Collecting.wanted_protocol() & ProtocolFlag.NOBODY
    Collecting.leading_space = True
    assert Collecting.wanted_protocol() & ProtocolFlag.HDR_LEADSPC
    Collecting.collect_body = False
    assert Collecting.wanted_protocol() & ProtocolFlag.NOBODY
