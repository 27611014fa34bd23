"""The README's examples run as written: the milter class and the pytest example."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from milterkit.testing import MilterHarness

README = Path(__file__).resolve().parent.parent / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def _block_with(text: str) -> str:
    matches = [b for b in _python_blocks() if text in b]
    assert len(matches) == 1, f"expected one README block containing {text!r}"
    return matches[0]


def test_readme_milter_and_its_test_run(milter_harness: Callable[..., MilterHarness]) -> None:
    namespace: dict[str, Any] = {}
    exec(compile(_block_with("class SpamTrap(Milter)"), "README:SpamTrap", "exec"), namespace)
    exec(compile(_block_with("def test_spammer_is_quarantined"), "README:test", "exec"), namespace)
    namespace["test_spammer_is_quarantined"](milter_harness)


def test_readme_rcpt_example_rejects_with_multiline_reply(
    milter_harness: Callable[..., MilterHarness],
) -> None:
    namespace: dict[str, Any] = {}
    exec(compile(_block_with("class SpamTrap(Milter)"), "README:SpamTrap", "exec"), namespace)
    mta = milter_harness(namespace["SpamTrap"])
    message = b"From: a@example.org\r\nTo: nobody@example.net\r\n\r\nhi\r\n"
    result = mta.check(message, recipients=["<nobody@example.net>", "<bob@example.net>"])
    reply = result.rejected_recipients["<nobody@example.net>"]
    assert reply.text == "550-5.1.1 No such user.\r\n550 5.1.1 Ask postmaster."
