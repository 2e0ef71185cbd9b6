"""Per-token input normalisation (`SAEConfig.input_norm`), as SAELens' `normalize_activations`
defines it for 'constant_norm_rescale' and 'layer_norm'.

Each raw row x [..., d] is mapped by its own statistics before the SAE reads it, and the SAE's
reconstruction is mapped back with the same row's statistics:

- constant_norm_rescale: c = sqrt(d) / ||x||;  in: x c;  out: x̂ / c.
- layer_norm: μ = mean(x), σ = std(x) (unbiased);  in: (x - μ) / (σ + 1e-5);  out: x̂ σ + μ
  (SAELens adds the epsilon going in only, and so does this).

These cannot be folded into the weights (the map differs per token). An all-zero row has no
norm: constant_norm_rescale leaves it at zero instead of dividing by zero.
"""

from __future__ import annotations

import math

from torch import Tensor

LAYER_NORM_EPS = 1e-5


def _norm_gain(x: Tensor) -> Tensor:
    """sqrt(d) / ||x|| per row [..., 1]; rows of norm 0 get gain 1 (they stay zero)."""
    norms = x.norm(dim=-1, keepdim=True)
    return math.sqrt(x.shape[-1]) / norms.masked_fill(norms == 0, math.sqrt(x.shape[-1]))


def normalise_tokens(x: Tensor, kind: str) -> Tensor:
    """Raw rows x [..., d] -> the rows the SAE reads, for input_norm `kind`."""
    if kind == "constant_norm_rescale":
        return x * _norm_gain(x)
    if kind == "layer_norm":
        centred = x - x.mean(dim=-1, keepdim=True)
        return centred / (centred.std(dim=-1, keepdim=True) + LAYER_NORM_EPS)
    if kind == "none":
        return x
    raise ValueError(f"unknown input_norm {kind!r}")


def denormalise_tokens(x_hat: Tensor, x: Tensor, kind: str) -> Tensor:
    """A reconstruction x_hat [..., d] of `normalise_tokens(x)` -> raw units, by the
    statistics of the raw rows x [..., d] it reconstructs."""
    if kind == "constant_norm_rescale":
        return x_hat / _norm_gain(x)
    if kind == "layer_norm":
        mean = x.mean(dim=-1, keepdim=True)
        return x_hat * (x - mean).std(dim=-1, keepdim=True) + mean
    if kind == "none":
        return x_hat
    raise ValueError(f"unknown input_norm {kind!r}")
