"""`run(cfg)`: the steer stage's one entry point, which runs the command a config is for
(SteerConfig -> steer, AttributeConfig -> attribute, FeaturesForConfig -> features-for)."""

from __future__ import annotations

from functools import singledispatch
from typing import Any

from monoscope.steer.commands import run_attribute, run_features_for, run_steer
from monoscope.steer.config import AttributeConfig, FeaturesForConfig, SteerConfig


@singledispatch
def run(cfg: object) -> dict[str, Any]:
    """Run the steer command `cfg` configures; returns its JSON result (also written to
    cfg.json_out when set)."""
    known = ", ".join(t.__name__ for t in run.registry if t is not object)
    raise TypeError(f"monoscope.steer.run takes one of {known}, not {type(cfg).__name__}")


run.register(SteerConfig, run_steer)
run.register(AttributeConfig, run_attribute)
run.register(FeaturesForConfig, run_features_for)
