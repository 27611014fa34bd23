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


def test_readme_client_example_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The "same from Python" block, with both of its addresses pointing at a live filter."""
    from milterkit.protocol import Accept, AddHeader, Command
    from tests.client.milter_server import MilterServer, Script

    server = MilterServer(Script(replies={Command.BODYEOB: [AddHeader(b"X-Seen", b"1"), Accept()]}))
    try:
        address = server.listen_unix(str(tmp_path / "filter.sock"))
        eml = b"From: <a@example.org>\r\nTo: <b@example.net>\r\nSubject: hi\r\n\r\nbody\r\n"
        (tmp_path / "message.eml").write_bytes(eml)
        monkeypatch.chdir(tmp_path)
        block = _block_with("ClientOptions(profile=SENDMAIL")
        block = block.replace("inet:8891@127.0.0.1", address).replace("unix:/run/x.sock", address)
        namespace: dict[str, Any] = {"messages": [eml, eml]}
        exec(compile(block, "README:client", "exec"), namespace)
    finally:
        server.stop()
    assert namespace["delivered"].message_bytes.endswith(b"X-Seen: 1\r\n\r\nbody\r\n")
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("accept ") and printed[1:] == ["accept", "accept"]
    connects = [p for log in server.logs for p in log.packets() if p.code == Command.CONNECT]
    assert [c.address for c in connects[1:]] == [b"192.0.2.1"]  # type: ignore[attr-defined]
