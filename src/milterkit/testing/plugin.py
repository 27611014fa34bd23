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

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from milterkit.result import CheckResult
from milterkit.testing.harness import MilterHarness, check


@pytest.fixture
def milter_harness() -> Iterator[Callable[..., MilterHarness]]:
    made: list[MilterHarness] = []

    def make(milter: Any, **options: Any) -> MilterHarness:
        harness = MilterHarness(milter, **options)
        made.append(harness)
        return harness

    yield make
    for harness in made:
        harness.close()


@pytest.fixture
def milter_check() -> Callable[..., CheckResult]:
    return check
