"""Fixtures of the cookbook tests: DKIM keys made with openssl for the session."""

from __future__ import annotations

import base64
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class DkimKey:
    """A fresh RSA key: the PEM file and the TXT record that publishes it."""

    path: Path
    pem: bytes
    txt: bytes

    def txt_line(self, selector: str, domain: str) -> str:
        return f"{selector}._domainkey.{domain} {self.txt.decode()}"


def _make_key(directory: Path, name: str) -> DkimKey:
    path = directory / f"{name}.pem"
    subprocess.run(
        ["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
         "-out", str(path)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    der = subprocess.run(
        ["openssl", "pkey", "-in", str(path), "-pubout", "-outform", "DER"],
        check=True, capture_output=True, timeout=60,
    ).stdout  # fmt: skip
    txt = b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)
    return DkimKey(path, path.read_bytes(), txt)


@pytest.fixture(scope="session")
def dkim_keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DkimKey, DkimKey]]:
    """Two keys (the second one to show a signature by the wrong key fails)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed (apt-get install openssl)")
    directory = tmp_path_factory.mktemp("dkim")
    directory.chmod(0o755)
    yield _make_key(directory, "one"), _make_key(directory, "two")


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """A private redis-server for the module (no persistence); its redis:// URL."""
    from ._services import redis_server

    with redis_server() as (url, _service):
        yield url


@pytest.fixture(scope="module")
def clamd_socket() -> Iterator[Path]:
    """A private clamd for the module, EICAR-only database; its unix socket."""
    from ._services import clamd_server

    with clamd_server() as (sock, _service):
        yield sock


@pytest.fixture(scope="module")
def spamd_port() -> Iterator[int]:
    """A private spamd for the module (shipped rules, no network tests); its TCP port."""
    from ._services import spamd_server

    with spamd_server() as (port, _service):
        yield port
