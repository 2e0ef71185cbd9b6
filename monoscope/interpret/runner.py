"""`run(cfg)`: the interpret stage's one entry point, which runs the command a config is for
(ExplainConfig -> explain, ScoreConfig -> score, ...), so every stage is run the same way."""

from __future__ import annotations

from functools import singledispatch
from typing import Any

from monoscope.interpret.commands import run_explain, run_score
from monoscope.interpret.compare import run_compare_neurons
from monoscope.interpret.config import (
    CompareNeuronsConfig,
    ExplainConfig,
    LLMServerConfig,
    NeuronsConfig,
    ScoreConfig,
    SpecificityConfig,
)
from monoscope.interpret.llm_server import run_llm_server
from monoscope.interpret.neurons import run_neurons
from monoscope.interpret.specificity import run_specificity


@singledispatch
def run(cfg: object, **options: Any) -> Any:
    """Run the interpret command `cfg` configures; `options` go to it (explain, score,
    specificity, neurons and compare-neurons take `lm=`, a loaded model to use). Returns what
    the command returns: the run's summary (a dict), or the neurons' feature store path."""
    known = ", ".join(t.__name__ for t in run.registry if t is not object)
    raise TypeError(f"monoscope.interpret.run takes one of {known}, not {type(cfg).__name__}")


run.register(ExplainConfig, run_explain)
run.register(ScoreConfig, run_score)
run.register(SpecificityConfig, run_specificity)
run.register(NeuronsConfig, run_neurons)
run.register(CompareNeuronsConfig, run_compare_neurons)
run.register(LLMServerConfig, run_llm_server)
