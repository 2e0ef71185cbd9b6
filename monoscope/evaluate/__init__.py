"""SAE -> metrics on held-out activations; loss recovered with the SAE spliced into the model."""

from monoscope.evaluate.config import EvalConfig
from monoscope.evaluate.evaluator import evaluate, format_table, run
from monoscope.evaluate.metrics import (
    ReconstructionStats,
    dead_fraction,
    dense_fraction,
    densities,
    density_histogram,
    explained_variance,
    firing_counts,
    fvu,
    loss_recovered,
    mean_l0,
    mse,
    mse_per_element,
)
from monoscope.evaluate.splice import heldout_contexts, splice_metrics

__all__ = [
    "EvalConfig",
    "ReconstructionStats",
    "dead_fraction",
    "dense_fraction",
    "densities",
    "density_histogram",
    "evaluate",
    "explained_variance",
    "firing_counts",
    "format_table",
    "fvu",
    "heldout_contexts",
    "loss_recovered",
    "mean_l0",
    "mse",
    "mse_per_element",
    "run",
    "splice_metrics",
]
