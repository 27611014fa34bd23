"""The optional mypyc build: what it compiles, how it shows, and MILTERKIT_PURE=1.

The same tests run in both installs: against the editable pure-Python checkout
(scripts/test) and against the compiled wheel (scripts/test-compiled, which sets
MILTERKIT_TEST_COMPILED=1), where they check that the extensions are what runs.
"""

from __future__ import annotations

import ast
import importlib.machinery
import os
import re
import subprocess
import sys
from pathlib import Path

import milterkit
from milterkit._compiled import COMPILABLE, _PreferSource, build_description, compiled_modules
from tests.conftest import TESTING_COMPILED
from tests.runtime.test_daemon import Daemon
from tests.runtime.test_server_mta import wait_for

REPO = Path(__file__).resolve().parent.parent


def _assigned(path: Path, name: str) -> object:
    """The literal value assigned to ``name`` at the top level of ``path``."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and [ast.unparse(t) for t in node.targets] == [name]:
            return ast.literal_eval(node.value)
    raise AssertionError(f"{name} not assigned in {path}")


def _python(code: str, **env: str) -> str:
    """Run ``code`` in a fresh interpreter of this install; its stdout."""
    clean = {k: v for k, v in os.environ.items() if k != "MILTERKIT_PURE"}
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout


def test_setup_compiles_exactly_the_modules_milterkit_reports() -> None:
    paths = _assigned(REPO / "setup.py", "COMPILED_MODULES")
    assert isinstance(paths, list)
    names = [p.removeprefix("src/milterkit/").removesuffix(".py").replace("/", ".") for p in paths]
    assert names == list(COMPILABLE)


def test_milter_stays_interpreted_so_users_can_subclass_it() -> None:
    assert "milter" not in COMPILABLE
    assert milterkit.Milter.__module__ == "milterkit.milter"
    assert str(sys.modules["milterkit.milter"].__file__).endswith(".py")


def test_compiled_build_uses_the_mypy_the_dev_extra_pins() -> None:
    pin = re.search(r'mypy_pin="([^"]+)"', (REPO / "scripts/test-compiled").read_text())
    assert pin is not None
    assert f'"{pin.group(1)}"' in (REPO / "pyproject.toml").read_text()


def test_this_run_loads_the_build_it_means_to_test() -> None:
    if TESTING_COMPILED:
        assert compiled_modules() == list(COMPILABLE)
        assert milterkit.compiled() is True
    else:
        assert compiled_modules() == []
        assert milterkit.compiled() is False


def test_version_names_the_build() -> None:
    out = _python("from milterkit.cli import main; main(['--version'])")
    build = "compiled: " + ", ".join(COMPILABLE) if TESTING_COMPILED else "pure Python"
    assert out == f"milterkit {milterkit.__version__} ({build})\n"


def test_pure_environment_variable_loads_only_python_sources() -> None:
    code = (
        "import sys, milterkit, milterkit.protocol, milterkit.session\n"
        "from milterkit.cli import main\n"
        "print(milterkit.compiled())\n"
        "print(sorted(n for n, m in list(sys.modules.items())\n"
        "    if n.startswith('milterkit') and not str(getattr(m, '__file__', '')).endswith('.py')\n"
        "    or '__mypyc' in n))\n"
        "main(['--version'])\n"
    )
    out = _python(code, MILTERKIT_PURE="1")
    assert out == f"False\n[]\nmilterkit {milterkit.__version__} (pure Python)\n"


def test_pure_finder_prefers_the_source_beside_an_extension(tmp_path: Path) -> None:
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    (tmp_path / f"fast{suffix}").write_bytes(b"")  # found, never loaded
    (tmp_path / "fast.py").write_text("")
    (tmp_path / f"only{suffix}").write_bytes(b"")
    finder = _PreferSource()
    spec = finder.find_spec("milterkit.fake.fast", [str(tmp_path)])
    assert spec is not None
    assert isinstance(spec.loader, importlib.machinery.SourceFileLoader)
    assert spec.origin == str(tmp_path / "fast.py")
    # No source beside it: the extension is all there is, so it stays.
    only = finder.find_spec("milterkit.fake.only", [str(tmp_path)])
    assert only is not None
    assert isinstance(only.loader, importlib.machinery.ExtensionFileLoader)
    # Other packages are not its business.
    assert finder.find_spec("fast", [str(tmp_path)]) is None


def test_daemon_start_line_names_the_build(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    daemon = Daemon(tmp_path, "--socket", f"unix:{tmp_path}/milter.sock")
    try:  # the socket is bound before the start line is written: wait for the line itself
        wait_for(lambda: "milterkit serving" in daemon.log(), 20, "the start line")
    finally:
        daemon.stop()
    line = next(line for line in daemon.log().splitlines() if "milterkit serving" in line)
    assert line.endswith(f"({build_description()})"), line
