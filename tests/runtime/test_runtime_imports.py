"""Import order of the runtime package: no cycle through the session, old names kept.

The session imports :mod:`milterkit.runtime.execution`; ``milterkit.runtime``
therefore loads its public names lazily (an eager import of the daemon would
import the session again, half-initialised). Each entry point is imported first
in a fresh interpreter, since a cycle only shows when its module comes first.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

import milterkit.runtime


def _fresh(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a new interpreter of this install."""
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.parametrize(
    "code",
    [
        "import milterkit.session",
        "import milterkit.runtime.execution",
        "import milterkit.runtime; milterkit.runtime.Server",
        "from milterkit.runtime import run, Server, DaemonConfig, RuntimeConfigError",
        "from milterkit.runtime import *; serve_sockets, new_event_loop, run_daemon",
        "import milterkit.execution",
        "import milterkit.testing",
    ],
)
def test_each_entry_point_imports_first_without_a_cycle(code: str) -> None:
    done = _fresh(code)
    assert done.returncode == 0, done.stderr


def test_public_names_are_those_of_their_modules() -> None:
    from milterkit.runtime.daemon import run
    from milterkit.runtime.server import Server

    assert milterkit.runtime.run is run
    assert milterkit.runtime.Server is Server
    assert set(milterkit.runtime.__all__) <= set(dir(milterkit.runtime))


def test_an_unknown_runtime_name_says_which() -> None:
    expected = "module 'milterkit.runtime' has no attribute 'nope'"
    with pytest.raises(AttributeError, match=re.escape(expected)):
        milterkit.runtime.nope  # noqa: B018


def test_the_old_execution_module_name_is_the_same_module() -> None:
    """Code written against ``milterkit.execution`` (private names, patches) still works."""
    import milterkit.execution
    import milterkit.runtime.execution
    from milterkit.execution import CallbackRunner, ExecutionSettings

    assert milterkit.execution is milterkit.runtime.execution
    assert CallbackRunner is milterkit.runtime.execution.CallbackRunner
    assert ExecutionSettings().threads == 64
    assert set(milterkit.runtime.execution.__all__) <= set(dir(milterkit.execution))
