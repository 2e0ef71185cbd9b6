"""The interpret stage: what a feature means, said by an LLM and measured.

Reads the feature store `analyze` wrote and adds to it (schema version 2: the `explanations` and
`scores` tables, `features.explanation` / `features.score`); reports go next to it.

backends/     the LLM protocol (base.py) and its openai, anthropic and local implementations
calls.py      every call through the content-addressed cache, with limits, retries and a budget
examples.py   a feature's windows from the store, split between explainer and scorers
explainer.py  examples -> a one-phrase explanation (prompts/ holds the versioned prompts)
scorers/      detection, fuzzing, simulation, embedding
specificity.py  the paper's 0-3 rubric per activation interval
neurons.py    MLP neurons as a dictionary; correlation.py / compare.py: features vs neurons
config.py     the commands' configs; runner.py: `run(cfg)`, which runs the command a config is for
"""

from monoscope.interpret.config import (
    CompareNeuronsConfig,
    ExplainConfig,
    LLMOptions,
    LLMServerConfig,
    NeuronsConfig,
    ScoreConfig,
    SpecificityConfig,
)
from monoscope.interpret.runner import run

__all__ = [
    "CompareNeuronsConfig",
    "ExplainConfig",
    "LLMOptions",
    "LLMServerConfig",
    "NeuronsConfig",
    "ScoreConfig",
    "SpecificityConfig",
    "run",
]
