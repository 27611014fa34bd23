"""The README's examples run as written: the milter class and the pytest example."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from milterkit.testing import MilterHarness

README = Path(__file__).resolve().parent.parent / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def _block_with(text: str) -> str:
    matches = [b for b in _python_blocks() if text in b]
    assert len(matches) == 1, f"expected one README block containing {text!r}"
    return matches[0]


def test_readme_milter_and_its_test_run(
    milter_harness: Callable[..., MilterHarness],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As a user copies them: the class into spamtrap.py, the test imports it from there."""
    (tmp_path / "spamtrap.py").write_text(_block_with("class SpamTrap(Milter)"))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "spamtrap", raising=False)
    namespace: dict[str, Any] = {}
    exec(compile(_block_with("def test_spammer_is_quarantined"), "README:test", "exec"), namespace)
    tests = [name for name in namespace if name.startswith("test_")]
    assert tests == ["test_spammer_is_quarantined", "test_unknown_user_is_refused"]
    for name in tests:
        namespace[name](milter_harness)


def test_readme_body_example(milter_harness: Callable[..., MilterHarness]) -> None:
    namespace: dict[str, Any] = {}
    exec(compile(_block_with("class NoExecutables(Milter)"), "README:body", "exec"), namespace)
    mta = milter_harness(namespace["NoExecutables"])
    clean = b"From: a@example.org\r\nTo: b@example.net\r\n\r\nhello\r\n"
    assert mta.check(clean).decision == "accept"
    assert mta.check(clean + b"TVqQAAMAAAAEAAAA\r\n").decision == "reject"


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
