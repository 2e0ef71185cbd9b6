"""Every stage has the same shape: its configs in `config.py`, and one entry point named `run`
that takes a config (interpret and steer, with several commands, pick the command by the
config's type)."""

from __future__ import annotations

import ast
import dataclasses
import importlib
from pathlib import Path

import pytest

import monoscope

STAGES = ("harvest", "train", "evaluate", "analyze", "interpret", "steer", "plan")


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_has_a_config_module_and_a_run(stage):
    package = importlib.import_module(f"monoscope.{stage}")
    config = importlib.import_module(f"monoscope.{stage}.config")
    configs = [
        obj
        for name, obj in vars(config).items()
        if name.endswith("Config") and dataclasses.is_dataclass(obj)
    ]
    assert configs, f"monoscope/{stage}/config.py defines no config dataclass"
    assert callable(getattr(package, "run", None)), f"monoscope.{stage} exports no `run`"
    assert "run" in package.__all__
    for cls in configs:
        assert getattr(package, cls.__name__) is cls, f"monoscope.{stage} does not export {cls}"


def test_config_classes_are_defined_only_in_config_modules():
    root = Path(monoscope.__file__).parent
    stray = []
    for path in sorted(root.glob("*/*.py")):
        if path.name == "config.py":
            continue
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef) and node.name.endswith("Config"):
                stray.append(f"{path.relative_to(root)}: {node.name}")
    assert not stray, "configs outside a stage's config.py:\n" + "\n".join(stray)


@pytest.mark.parametrize("stage", ["interpret", "steer"])
def test_run_dispatches_every_config_of_the_stage(stage):
    """A config added to config.py without a command behind it would make `run` refuse it."""
    package = importlib.import_module(f"monoscope.{stage}")
    config = importlib.import_module(f"monoscope.{stage}.config")
    refuse = package.run.dispatch(object)
    commands = [
        obj
        for name, obj in vars(config).items()
        if name.endswith("Config") and dataclasses.is_dataclass(obj)
    ]
    for cls in commands:
        assert package.run.dispatch(cls) is not refuse, f"{stage}.run has no command for {cls}"


@pytest.mark.parametrize("stage", ["interpret", "steer"])
def test_run_refuses_an_unknown_config_type_naming_the_ones_it_takes(stage):
    from monoscope.harvest import HarvestConfig

    package = importlib.import_module(f"monoscope.{stage}")
    with pytest.raises(
        TypeError, match=rf"monoscope\.{stage}\.run takes one of .*not HarvestConfig"
    ):
        package.run(HarvestConfig())


def test_interpret_run_refuses_the_shared_llm_options_base():
    """LLMOptions is no command: only its subclasses are."""
    from monoscope.interpret import LLMOptions, run

    with pytest.raises(TypeError, match=r"ExplainConfig.*not LLMOptions"):
        run(LLMOptions())
