"""Smoke test of ``benchmarks/postfix.py --smoke``: a real Postfix, smtp-source and smtp-sink.

Not timed: it checks that the quickest mode starts the private Postfix, the
sink and a milterkit milter, drives them, finds nothing lost, and writes its
table into the given Markdown file without touching the rest of that file.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.realmta


def _why_not() -> str | None:
    from tests.realmta.postfix import postfix_available

    reason = postfix_available()
    if reason is None and not os.path.exists("/usr/sbin/smtp-source"):
        reason = "smtp-source not found (Debian's postfix package has it)"
    return reason


def test_postfix_benchmark_smoke(tmp_path: Path) -> None:
    reason = _why_not()
    if reason is not None:
        pytest.skip(reason)
    out = tmp_path / "benchmarks.md"
    out.write_text("# Kept\n\nText before the section.\n")
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "postfix.py"), "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "| postfix-alone | " in done.stdout
    assert "| milterkit-asyncio-1w | " in done.stdout
    report = out.read_text()
    assert report.startswith("# Kept\n\nText before the section.\n")
    assert report.count("<!-- begin benchmarks/postfix.py -->") == 1
    assert "Every message smtpd accepted was logged `status=sent`" in report


def test_postfix_benchmark_rejects_unknown_configuration() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "postfix.py"), "--only", "nosuch-milter"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "unknown configurations: nosuch-milter" in done.stderr


def _bench() -> Any:
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import postfix as bench
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return bench


_LOG = """\
Dec 03 05:08:19 mx postfix/qmgr[1]: 372ED2110DC: from=<b@example.com>, size=9000, nrcpt=1 (queue active)
Dec 03 05:08:19 mx postfix/qmgr[1]: 4AC3C210E2A: from=<b@example.com>, size=9000, nrcpt=1 (queue active)
Dec 03 05:08:19 mx postfix/cleanup[2]: 372ED2110DC: milter-header-info: header X-Bench: milterkit from x
Dec 03 05:08:19 mx postfix/smtp[3]: 372ED2110DC: to=<s@example.net>, relay=127.0.0.1[127.0.0.1]:2525, delay=0.1, status=sent (250 Ok)
Dec 03 05:08:19 mx postfix/smtp[3]: 4AC3C210E2A: to=<s@example.net>, relay=127.0.0.1[127.0.0.1]:2526, delay=0.1, status=sent (250 Ok)
Dec 03 05:08:19 mx postfix/cleanup[2]: warning: file system clock is 1 seconds ahead of local clock
Dec 03 05:08:19 mx postfix/libmilter-C/smtpd[4]: connect from unknown[127.0.0.1]
Dec 03 05:08:20 mx postfix/milterkit-uvloop-1w/smtpd[5]: warning: milter inet:127.0.0.1:9: can't read SMFIC_EOH reply packet header: Connection timed out
Dec 03 05:08:20 mx postfix/cleanup[2]: 5B000210E2B: milter-reject: END-OF-MESSAGE from x: 4.7.1 Service unavailable - try again later
"""  # noqa: E501  (real Postfix log lines)


def test_log_scan_counts_and_problems() -> None:
    """Only the sink's port counts as delivered; milter errors are problems, clock notices not."""
    counts = _bench().scan_log(_LOG, 2525)
    assert counts.accepted == {"372ED2110DC", "4AC3C210E2A"}
    assert counts.delivered == {"372ED2110DC"}
    assert counts.headers == {"372ED2110DC"}
    assert [line.split(": ", 1)[1][:20] for line in counts.problems] == [
        "warning: milter inet",
        "5B000210E2B: milter-",
    ]


def test_postfix_benchmark_replaces_its_own_section(tmp_path: Path) -> None:
    """A second run replaces the marked section and keeps what surrounds it."""
    bench = _bench()
    out = tmp_path / "b.md"
    out.write_text("# Head\n")
    bench.write_section(out, f"{bench.BEGIN}\nfirst\n{bench.END}\n")
    out.write_text(out.read_text() + "\n## After\n")
    bench.write_section(out, f"{bench.BEGIN}\nsecond\n{bench.END}\n")
    text = out.read_text()
    assert text == f"# Head\n\n{bench.BEGIN}\nsecond\n{bench.END}\n\n## After\n"
