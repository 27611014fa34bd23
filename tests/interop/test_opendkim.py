"""The client against a real third-party milter from Debian: OpenDKIM signing.

The test generates a key, runs ``opendkim`` as a signing filter on loopback,
runs a message through it with :func:`milterkit.client.check`, applies the
modifications with ``result.apply()``, and verifies the DKIM-Signature of the
delivered message with dkimpy, serving the public key from the generated
``.txt`` record (no DNS).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from milterkit.client import check
from milterkit.protocol import InsertHeader
from tests.realmta._util import free_port

dkim = pytest.importorskip("dkim", reason="dkimpy is in the dev extra (pip install -e .[dev])")

MESSAGE = (
    b"From: Alice <alice@example.org>\r\n"
    b"To: Bob <bob@example.net>\r\n"
    b"Subject: signed by OpenDKIM through milterkit\r\n"
    b"Date: Fri, 27 Nov 2026 06:00:00 +0000\r\n"
    b"Message-ID: <dkim-1@example.org>\r\n"
    b"\r\n"
    b"Hello Bob,\r\n\r\nthis body is covered by the signature.\r\n"
)


def _txt_record(path: Path) -> bytes:
    """The TXT data of opendkim-genkey's zone snippet: the quoted pieces joined."""
    return "".join(re.findall(r'"([^"]*)"', path.read_text())).encode()


@pytest.fixture(scope="module")
def opendkim() -> Iterator[tuple[str, bytes]]:
    for tool in ("opendkim", "opendkim-genkey"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (apt-get install opendkim opendkim-tools)")
    work = _safe_dir()
    subprocess.run(
        ["opendkim-genkey", "-D", str(work), "-d", "example.org", "-s", "test"],
        check=True,
        timeout=60,
    )
    port = free_port()
    conf = work / "opendkim.conf"
    conf.write_text(
        "Syslog no\nMode sv\nDomain example.org\nSelector test\n"
        f"KeyFile {work / 'test.private'}\nSocket inet:{port}@127.0.0.1\n"
        f"PidFile {work / 'opendkim.pid'}\nCanonicalization relaxed/simple\n"
        "InternalHosts 127.0.0.1\nBackground no\n"
    )
    daemon = subprocess.Popen(["opendkim", "-f", "-x", str(conf)])
    try:
        _wait_listening(port, daemon)
        yield f"inet:{port}@127.0.0.1", _txt_record(work / "test.txt")
    finally:
        daemon.terminate()
        daemon.wait(20)
        shutil.rmtree(work, ignore_errors=True)


def _safe_dir() -> Path:
    """OpenDKIM refuses files under a world-writable directory such as /tmp."""
    for base in (Path("/run"), Path(__file__).resolve().parents[1] / "ref" / "build"):
        if base.is_dir() and os.access(base, os.W_OK) and not base.stat().st_mode & 0o002:
            return Path(tempfile.mkdtemp(prefix="milterkit-opendkim-", dir=base))
    pytest.skip("no directory that OpenDKIM accepts as safe (not world-writable)")


def _wait_listening(port: int, daemon: subprocess.Popen[bytes]) -> None:
    hex_port = f":{port:04X} "
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert daemon.poll() is None, f"opendkim exited with {daemon.returncode}"
        if hex_port in Path("/proc/net/tcp").read_text():
            return
        time.sleep(0.05)
    raise AssertionError("opendkim did not listen within 20 s")


def test_opendkim_signature_verifies_after_apply(opendkim: tuple[str, bytes]) -> None:
    address, txt = opendkim
    result = check(
        address,
        MESSAGE,
        sender="<alice@example.org>",
        recipients=["<bob@example.net>"],
        macros={"i": "4ABCDEF123"},
    )
    assert result.delivered, result
    signatures = [
        m for m in result.modifications if getattr(m, "name", b"").lower() == b"dkim-signature"
    ]
    assert len(signatures) == 1, result.modifications
    assert isinstance(signatures[0], InsertHeader)
    signed = result.apply(MESSAGE).message_bytes
    assert signed.startswith(b"DKIM-Signature: ")

    def dns(name: bytes, timeout: int = 5) -> bytes:
        assert name == b"test._domainkey.example.org."
        return txt

    assert dkim.verify(signed, dnsfunc=dns)
    tampered = signed.replace(b"covered by", b"changed in")
    assert not dkim.verify(tampered, dnsfunc=dns)
