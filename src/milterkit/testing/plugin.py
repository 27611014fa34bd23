"""pytest plugin (registered through the ``pytest11`` entry point).

Fixtures:

* ``milter_harness``: a factory, ``milter_harness(MyMilter, profile=SENDMAIL)``,
  returning a :class:`~milterkit.testing.MilterHarness`; every harness made
  is closed (QUIT, close callback) at the end of the test.
* ``milter_check``: one-shot ``milter_check(MyMilter, message, sender=..., ...)``.

The assertion helpers live in :mod:`milterkit.testing` (``assert_header_added``
and friends); they raise AssertionError with everything the milter did.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

import pytest

from milterkit.result import CheckResult, MessageInput
from milterkit.testing.harness import HarnessKeywords, MilterFactory, MilterHarness, check

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["CheckFactory", "HarnessFactory", "milter_check", "milter_harness"]


class HarnessFactory(Protocol):
    """The ``milter_harness`` fixture: :class:`MilterHarness`'s own signature."""

    def __call__(
        self, milter: MilterFactory, /, **keywords: Unpack[HarnessKeywords]
    ) -> MilterHarness: ...


class CheckFactory(Protocol):
    """The ``milter_check`` fixture: :func:`milterkit.testing.check`'s own signature."""

    def __call__(
        self,
        milter: MilterFactory,
        message: MessageInput,
        /,
        *,
        sender: str | None = None,
        recipients: Sequence[str] | None = None,
        sender_args: Sequence[str] = (),
        recipient_args: Mapping[str, Sequence[str]] | None = None,
        **keywords: Unpack[HarnessKeywords],
    ) -> CheckResult: ...


@pytest.fixture
def milter_harness() -> Iterator[HarnessFactory]:
    made: list[MilterHarness] = []

    def make(milter: MilterFactory, /, **keywords: Unpack[HarnessKeywords]) -> MilterHarness:
        harness = MilterHarness(milter, **keywords)
        made.append(harness)
        return harness

    yield make
    for harness in made:
        harness.close()


@pytest.fixture
def milter_check() -> CheckFactory:
    """``milter_check(MyMilter, message, sender=..., ...)``: one message, one fresh harness."""
    return check
