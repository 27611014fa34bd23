"""Optional mypyc build of the per-packet hot path (issue 13).

Everything else is in pyproject.toml. By default this builds the plain pure-Python
wheel and needs neither a compiler nor mypy. With ``MILTERKIT_MYPYC=1`` it compiles
the modules listed in ``COMPILED_MODULES`` with mypyc (from mypy, the version pinned
in the dev extra), as black and mypy ship their wheels; the ``.py`` sources stay in
the wheel beside the extensions, so ``MILTERKIT_PURE=1`` can still run them.

Build the compiled wheel (mypy must be importable by the build, hence the extra
requirement or ``--no-build-isolation``)::

    pip install "mypy==2.4.1" build
    MILTERKIT_MYPYC=1 python -m build --wheel --no-isolation
"""

from __future__ import annotations

import os

from setuptools import setup

# The modules that carry the per-packet work: framing, message pack/unpack, the
# two state machines and their step tables, negotiation, the macro store
# (nearly every command comes with a MACRO packet), and the session that drives
# a Milter (dispatch, replies) with the context its milter reads and the
# runtime helper it hands pooled and awaited calls to (async and threads-mode
# milters pass through it on every command). Left
# interpreted: milter.py (users subclass Milter with ordinary classes, which
# cannot inherit from a compiled class without mypy_extensions at run time) and
# _logging.py (mypyc rejects its TYPE_CHECKING-dependent LoggerAdapter base).
# MacroStore is final: code that must see each MACRO packet sets its
# ``observer`` instead.
COMPILED_MODULES = [
    "src/milterkit/protocol/errors.py",
    "src/milterkit/protocol/events.py",
    "src/milterkit/protocol/codes.py",
    "src/milterkit/protocol/constants.py",
    "src/milterkit/protocol/framing.py",
    "src/milterkit/protocol/macros.py",
    "src/milterkit/protocol/messages.py",
    "src/milterkit/protocol/steps.py",
    "src/milterkit/protocol/state.py",
    "src/milterkit/protocol/negotiate.py",
    "src/milterkit/protocol/filter.py",
    "src/milterkit/protocol/mta.py",
    "src/milterkit/protocol/text.py",
    "src/milterkit/context.py",
    "src/milterkit/session.py",
    "src/milterkit/runtime/callbacks.py",
]


def _mypyc_extensions() -> list[object]:
    """The mypyc extension modules, imported only when a compiled build is asked for."""
    from mypyc.build import mypycify

    return list(
        mypycify(
            # mypyc type-checks what the modules import; optional packages (uvloop)
            # need not be installed for the build.
            [
                "--strict",
                "--config-file=pyproject.toml",
                "--ignore-missing-imports",
                *COMPILED_MODULES,
            ],
            opt_level=os.environ.get("MILTERKIT_MYPYC_OPT_LEVEL", "3"),
        )
    )


if os.environ.get("MILTERKIT_MYPYC") == "1":
    setup(ext_modules=_mypyc_extensions())
else:
    setup()
