"""Build and run the C reference filter (``ref_filter.c``, Debian libmilter).

The reference filter is the "known good" libmilter peer for integration
tests.  It is compiled on demand (and only again when the source or the
compiler command changes) so that tests need nothing but gcc and
libmilter-dev, installed by ``scripts/install-system-deps``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import select
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "ref_filter.c"
BUILD_DIR = HERE / "build"
MFAPI_HEADER = Path("/usr/include/libmilter/mfapi.h")
CFLAGS = ("-Wall", "-O2")
LIBS = ("-lmilter", "-lpthread")


class Unavailable(RuntimeError):  # noqa: N818 - name fixed by the test API
    """The reference filter cannot be built or run here (missing tool/library)."""


def _check_toolchain() -> str:
    gcc = shutil.which("gcc")
    if gcc is None:
        raise Unavailable("gcc not found (run scripts/install-system-deps)")
    if not MFAPI_HEADER.exists():
        raise Unavailable(f"{MFAPI_HEADER} missing (apt-get install libmilter-dev)")
    return gcc


def _source_digest() -> str:
    """Hash of source and build flags: the binary name, so edits force a rebuild."""
    h = hashlib.sha256(SOURCE.read_bytes())
    h.update(" ".join(CFLAGS + LIBS).encode())
    return h.hexdigest()[:16]


def build_ref_filter(build_dir: Path = BUILD_DIR) -> Path:
    """Compile ref_filter.c unless an up-to-date binary exists; return its path."""
    gcc = _check_toolchain()
    build_dir.mkdir(parents=True, exist_ok=True)
    target = build_dir / f"ref_filter-{_source_digest()}"
    if target.exists():
        return target
    # Compile to a temporary name and rename, so concurrent test workers
    # never run a half-written binary.
    fd, tmp = tempfile.mkstemp(prefix=".ref_filter-", dir=build_dir)
    os.close(fd)
    cmd = [gcc, *CFLAGS, "-o", tmp, str(SOURCE), *LIBS]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        os.unlink(tmp)
        raise Unavailable(f"compiling ref_filter failed: {proc.stderr.strip()}")
    os.replace(tmp, target)
    return target


def _wait_ready(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Wait for the filter's READY line (printed after listen()), bounded."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    buf = b""
    while b"READY" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"ref_filter not ready after {timeout}s")
        ready, _, _ = select.select([proc.stdout], [], [], min(left, 0.2))
        if ready:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                raise RuntimeError(f"ref_filter exited early (rc={proc.wait(5)})")
            buf += chunk


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextlib.contextmanager
def running_ref_filter(
    socket_spec: str, *, verbose: bool = False, timeout: float = 10.0
) -> Iterator[subprocess.Popen[bytes]]:
    """Run the reference filter on ``socket_spec`` (libmilter syntax).

    ``socket_spec`` is e.g. ``inet:9999@127.0.0.1`` or ``unix:/path``.  The
    process is started, awaited until it listens, and always killed at exit.
    With ``verbose`` it traces every callback on stderr (inherited).
    """
    binary = build_ref_filter()
    env = dict(os.environ)
    if verbose:
        env["REF_FILTER_VERBOSE"] = "1"
    proc = subprocess.Popen([str(binary), socket_spec], stdout=subprocess.PIPE, env=env)
    try:
        _wait_ready(proc, timeout)
        yield proc
    finally:
        _stop(proc)
        if proc.stdout is not None:
            proc.stdout.close()
