"""mypy --strict checks the settings users pass to every MTA-side entry point.

The settings were ``**options: Any`` once; a misspelt keyword then failed at
run time, or never. This runs mypy on a user's script with the usual mistakes.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

mypy_api = pytest.importorskip("mypy.api")

SCRIPT = """
    from milterkit import Milter
    from milterkit.client import AsyncMilterClient, ClientOptions, MilterClient, check
    from milterkit.mtaprofile import SENDMAIL
    from milterkit.testing import MilterHarness
    from milterkit.testing import check as harness_check

    options = ClientOptions(profile=SENDMAIL, timeout=5)
    MilterClient("unix:/x", options=options, helo="ok.example")
    MilterClient("unix:/x", timeot=3)
    AsyncMilterClient("unix:/x", client_port="25")
    check("unix:/x", b"", options=options, max_reply_bytes="big")
    MilterHarness(Milter, reraise=1, profile=SENDMAIL)
    harness_check(Milter, b"", profile="postfix")
"""


EXPECTED = [
    'Unexpected keyword argument "timeot" for "MilterClient"',
    'Argument "client_port" to "AsyncMilterClient" has incompatible type "str"',
    'Argument "max_reply_bytes" to "check" has incompatible type "str"',
    'Argument "reraise" to "MilterHarness" has incompatible type "int"',
    'Argument "profile" to "check" has incompatible type "str"; expected "MTAProfile"',
]


def test_mypy_checks_every_client_keyword(tmp_path: Path) -> None:
    script = tmp_path / "user_script.py"
    script.write_text(textwrap.dedent(SCRIPT))
    cache = str(tmp_path / "cache")
    out, _, status = mypy_api.run(
        ["--strict", "--cache-dir", cache, "--python-version", "3.10", str(script)]
    )
    errors = [line for line in out.splitlines() if ": error: " in line]
    assert status == 1, out
    assert len(errors) == len(EXPECTED), out
    for line, wanted in zip(errors, EXPECTED, strict=True):
        assert wanted in line, out
