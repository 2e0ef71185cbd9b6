"""GroupMax SAE (arch 'groupmax'): EleutherAI sparsify's `activation="groupmax"`, read only.

The latents are k contiguous groups of n_features / k; each group keeps its largest
ReLU'd pre-activation and zeroes the rest:

    pre = ReLU(W_enc^T (x - b_dec) + b_enc)                (x normalised; b_dec as configured)
    f[g * m + j] = pre[g * m + j] if j = argmax_j' pre[g * m + j'] else 0,    m = n_features / k
    x_hat = f W_dec + b_dec

So every token has at most k active latents, one per group. monoscope does not train it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from monoscope.sae.base import SparseAutoencoder, TrainStep
from monoscope.sae.config import SAEConfig


class GroupMaxSAE(SparseAutoencoder):
    """k groups of n_features / k latents; each group's largest ReLU'd pre-activation."""

    arch = "groupmax"
    subtracts_b_dec = True
    uses_k = True

    @classmethod
    def check_config(cls, cfg: SAEConfig) -> None:
        assert cfg.k is not None  # SAEConfig requires k of an architecture that uses it
        if cfg.n_features % cfg.k:
            raise ValueError(
                f"n_features must be a multiple of k for groupmax (k groups of equal size): "
                f"{cfg.n_features} is not a multiple of {cfg.k}"
            )

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator) -> None:
        """Random unit decoder rows, the encoder their transpose, biases 0 (as sparsify)."""
        self.init_tied(generator)

    def encode(self, x: Tensor) -> Tensor:
        """Raw x [..., d_in] -> [..., n_features]: one latent per group kept."""
        pre = torch.relu(self.pre_activations(x))
        groups = pre.unflatten(-1, (self.cfg.k, -1))  # [..., k, n_features / k]
        values, positions = groups.max(dim=-1, keepdim=True)
        return torch.zeros_like(groups).scatter_(-1, positions, values).flatten(-2)

    def training_step(
        self, x: Tensor, coefficient: float, dead_mask: Tensor | None = None
    ) -> TrainStep:
        raise ValueError("groupmax SAEs are read (sparsify imports), not trained by monoscope")
