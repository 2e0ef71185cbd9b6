"""What the trainer asks of an architecture: its training defaults, how its sparsity is set,
and the settings its start from a sample of the data reads.

Each trainable SAE class declares these (`training_defaults`, and its other recipes
`short_run_recipe` and `paper_recipe`; `sparsity`, `start_settings`, `start_from_sample`), so
monoscope.train holds no per-architecture branches. Nothing here imports the trainer: sae/ sits
below train/.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from monoscope.sae.base import SparseAutoencoder

DEFAULT_K = 32
"""Active latents per token of the k-sparse architectures unless --k says otherwise."""

SPARSITY_K = "k"
"""`sparsity` of an architecture whose L0 a k fixes (topk, batchtopk): --k, no --target-l0;
its coefficient weighs an auxiliary loss and is not warmed up."""
SPARSITY_PENALTY = "penalty"
"""`sparsity` of an architecture whose L0 a penalty sets (relu: L1, jumprelu: L0): its
coefficient is warmed up and --target-l0 may steer it; no --k."""


@dataclass(frozen=True)
class TrainingDefaults:
    """The values `monoscope train` uses for an architecture where the config leaves a
    setting at None (each field is the TrainConfig field of the same name)."""

    lr: float
    coefficient: float
    adam_beta1: float
    lr_warmup_fraction: float
    b_dec_init: str
    decoder_lr_multiple: float = 1.0
    decoder_init_power: float = 0.0
    adam_basis: str = "standard"
    idle_momentum: str = "keep"
    b_enc_init_share: float = 0.0
    k: int | None = None
    lr_reference_features: int = 0
    """Not a TrainConfig field: when set, `lr` is for a dictionary of this many features and
    scales as √(lr_reference_features / n_features), as Bussmann et al.'s 2e-4 / √(F / 2^14)."""

    def lr_for(self, n_features: int | None) -> float | None:
        """The learning rate for a dictionary of `n_features`; None where it scales with a
        size not yet known (the trainer resolves it once the data gives the width)."""
        if not self.lr_reference_features:
            return self.lr
        if n_features is None:
            return None
        return self.lr * (self.lr_reference_features / n_features) ** 0.5


RECIPES = ("default", "short-run", "paper")
"""--recipe: 'default', the settings that won at millions of tokens (docs/LOG.md);
'short-run', the ones tuned for runs of a few hundred steps on ~200k tokens (the demo);
'paper', the architecture's published recipe as far as its sources give it (docs/training.md)."""


def recipe_defaults(cls: type[SparseAutoencoder], recipe: str) -> TrainingDefaults:
    """The training defaults trainable SAE class `cls` declares for `recipe`."""
    by_name = {
        "default": cls.training_defaults,
        "short-run": cls.short_run_recipe,
        "paper": cls.paper_recipe,
    }
    if recipe not in by_name:
        raise ValueError(f"--recipe must be one of {', '.join(RECIPES)}, got {recipe!r}")
    return by_name[recipe]


@dataclass(frozen=True)
class SampleStart:
    """The resolved settings an architecture's `start_from_sample` may read; each class names
    the ones it reads in `start_settings` (a setting it does not read must stay at 0)."""

    decoder_init_power: float = 0.0
    b_enc_init_share: float = 0.0
    target_l0: float = 0.0


L0_SAMPLE_ROWS = 4096
"""Rows of the start's sample that set a penalty architecture's starting L0 (--target-l0)."""
