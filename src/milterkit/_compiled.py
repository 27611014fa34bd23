"""Whether the mypyc-compiled modules are loaded, and ``MILTERKIT_PURE=1`` to refuse them.

A compiled wheel (``MILTERKIT_MYPYC=1``, see setup.py) holds each compiled
module twice: the extension and its ``.py`` source. Python prefers the extension;
with ``MILTERKIT_PURE=1`` in the environment, :func:`prefer_pure_python` (called
by ``milterkit/__init__.py`` before anything else is imported) installs a finder
that loads the ``.py`` source of every ``milterkit.*`` module instead, so a bug
can be checked against pure Python without reinstalling. Behaviour is the same
either way; only speed differs.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType

# The modules setup.py compiles (keep the two lists equal; a test checks it).
COMPILABLE = (
    "protocol.errors",
    "protocol.events",
    "protocol.codes",
    "protocol.constants",
    "protocol.framing",
    "protocol.macros",
    "protocol.messages",
    "protocol.steps",
    "protocol.state",
    "protocol.negotiate",
    "protocol.filter",
    "protocol.mta",
    "protocol.text",
    "context",
    "session",
    "runtime.callbacks",
)


class _PreferSource(importlib.abc.MetaPathFinder):
    """Finds ``milterkit.*`` modules as usual, but swaps an extension for its ``.py``."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> ModuleSpec | None:
        if not fullname.startswith("milterkit."):
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or not isinstance(spec.loader, importlib.machinery.ExtensionFileLoader):
            return spec
        source = Path(str(spec.origin)).parent / (fullname.rpartition(".")[2] + ".py")
        if not source.is_file():
            return spec
        return importlib.util.spec_from_file_location(fullname, source)


def prefer_pure_python() -> None:
    """Make every later ``milterkit.*`` import load the ``.py`` source (idempotent)."""
    if not any(isinstance(finder, _PreferSource) for finder in sys.meta_path):
        sys.meta_path.insert(0, _PreferSource())


def compiled_modules() -> list[str]:
    """The compilable modules that were loaded from an extension (imports them)."""
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    loaded = []
    for name in COMPILABLE:
        module = importlib.import_module(f"milterkit.{name}")
        if str(getattr(module, "__file__", "")).endswith(suffixes):
            loaded.append(name)
    return loaded


def compiled() -> bool:
    """True when the compiled (mypyc) build of milterkit is what runs in this process."""
    return bool(compiled_modules())


def build_description() -> str:
    """``compiled: protocol.framing, ...`` or ``pure Python``, for --version and logs."""
    loaded = compiled_modules()
    return f"compiled: {', '.join(loaded)}" if loaded else "pure Python"


if os.environ.get("MILTERKIT_PURE") == "1":
    prefer_pure_python()
