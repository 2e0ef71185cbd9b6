"""The type checker's configuration covers the public API: every module that defines a name
`monoscope` exports (and each stage's `run`) is checked strictly. `.ci/run` runs `mypy`."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

import monoscope

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
PYPROJECT = Path(monoscope.__file__).parent.parent / "pyproject.toml"
STRICT_FLAGS = {
    "disallow_untyped_defs": True,
    "disallow_incomplete_defs": True,
    "disallow_any_generics": True,
    "warn_return_any": True,
    "implicit_reexport": False,
    "strict_equality": True,
}


def strict_modules() -> set[str]:
    config = tomllib.loads(PYPROJECT.read_text())["tool"]["mypy"]
    found: set[str] = set()
    for override in config["overrides"]:
        if all(override.get(flag) == value for flag, value in STRICT_FLAGS.items()):
            found.update(override["module"])
    return found


def test_mypy_checks_the_package():
    config = tomllib.loads(PYPROJECT.read_text())["tool"]["mypy"]
    assert config["files"] == ["monoscope"]


def test_every_module_of_the_public_api_is_checked_strictly():
    strict = strict_modules()
    defining = {"monoscope"}
    for name in monoscope.__all__:
        defining.add(getattr(monoscope, name).__module__)
    for stage in ("harvest", "train", "evaluate", "analyze"):
        defining.add(importlib.import_module(f"monoscope.{stage}").run.__module__)
    missing = sorted(defining - strict)
    assert not missing, f"public API modules not checked strictly by mypy: {missing}"
