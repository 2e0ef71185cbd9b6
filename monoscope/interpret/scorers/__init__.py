"""The four scorers of an explanation, one interface (`Scorer`, `ScoreResult` in base.py):
detection and fuzzing (Delphi), simulation (Bills et al. 2023), embedding (Delphi's retrieval).
`make_scorer('detection', batch_size=8)` builds one by name."""

from __future__ import annotations

from typing import Any

from monoscope.interpret.scorers.base import STATUSES, Scorer, ScoreResult
from monoscope.interpret.scorers.detection import DetectionScorer
from monoscope.interpret.scorers.embedding import EmbeddingScorer
from monoscope.interpret.scorers.fuzzing import FuzzingScorer
from monoscope.interpret.scorers.simulation import SimulationScorer

SCORERS: dict[str, type[Scorer]] = {
    "detection": DetectionScorer,
    "fuzzing": FuzzingScorer,
    "simulation": SimulationScorer,
    "embedding": EmbeddingScorer,
}
LLM_SCORERS = ("detection", "fuzzing", "simulation")
"""Scorers whose judge is an LLM `Caller` (embedding's is a sentence embedder)."""


def make_scorer(name: str, **options: Any) -> Scorer:
    """A scorer by name with its options (batch_size, max_activating, ...)."""
    if name not in SCORERS:
        raise ValueError(f"unknown scorer {name!r}; choose from {', '.join(SCORERS)}")
    return SCORERS[name](**options)


__all__ = [
    "LLM_SCORERS",
    "SCORERS",
    "STATUSES",
    "DetectionScorer",
    "EmbeddingScorer",
    "FuzzingScorer",
    "ScoreResult",
    "Scorer",
    "SimulationScorer",
    "make_scorer",
]
