"""``milterkit run TARGET``: where the milter's code may come from, and load errors."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from milterkit.cli.run import load_target
from milterkit.runtime.errors import RuntimeConfigError

REPO = Path(__file__).resolve().parents[2]
PLANTED = textwrap.dedent(
    """
    import pathlib
    pathlib.Path(__file__).with_name("planted-module-ran").write_text("as root")
    from milterkit import Milter

    class Evil(Milter):
        pass
    """
)


def run_cli(cwd: Path, *args: str, via: str = "-m") -> subprocess.CompletedProcess[str]:
    """``python -m milterkit run ...`` or the ``-c`` form, both of which put cwd on sys.path."""
    prefix = (
        ["-m", "milterkit"]
        if via == "-m"
        else ["-c", "import sys; from milterkit.cli import main; sys.exit(main())"]
    )
    return subprocess.run(
        [sys.executable, *prefix, "run", *args, "--socket", "inet:1@127.0.0.1", "--workers", "0"],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": f"{REPO}/src"},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("via", ["-m", "-c"])
def test_module_in_current_directory_is_not_imported(tmp_path: Path, via: str) -> None:
    (tmp_path / "evilmod.py").write_text(PLANTED)
    done = run_cli(tmp_path, "evilmod:Evil", via=via)
    assert done.returncode == 78
    assert done.stderr == (
        "milterkit run: cannot import evilmod: No module named 'evilmod' (the current "
        "directory is not searched; give a file path or --pythonpath DIR)\n"
    )
    assert not (tmp_path / "planted-module-ran").exists()


def test_pythonpath_names_the_directory(tmp_path: Path) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "goodmod.py").write_text(
        "from milterkit import Milter\nclass Good(Milter):\n    pass\n"
    )
    assert load_target("goodmod:Good", [str(code)]).__name__ == "Good"
    with pytest.raises(RuntimeConfigError, match="--pythonpath /no/such/dir: not a directory"):
        load_target("goodmod:Good", ["/no/such/dir"])


def test_error_at_import_gives_type_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "keyerr.py"
    path.write_text('import os\n\nCONFIG = os.environ["FILTER_CFG_UNSET_IN_TESTS"]\n')
    with pytest.raises(RuntimeConfigError) as caught:
        load_target(f"{path}:Filter")
    assert str(caught.value) == (
        f"error while loading {path}: KeyError: 'FILTER_CFG_UNSET_IN_TESTS' (at {path} line 3)"
    )


def test_error_at_import_of_a_module(tmp_path: Path) -> None:
    (tmp_path / "zerodiv.py").write_text("x = 1\ny = x / 0\n")
    with pytest.raises(RuntimeConfigError) as caught:
        load_target("zerodiv:Filter", [str(tmp_path)])
    assert str(caught.value) == (
        "error while importing zerodiv: ZeroDivisionError: division by zero "
        f"(at {tmp_path}/zerodiv.py line 2)"
    )
