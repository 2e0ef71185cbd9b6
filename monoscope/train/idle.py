"""`--idle-momentum reset`: a latent that gets no gradient in a batch loses its Adam momentum.

In a TopK batch some latents get no gradient at all: they fired nowhere (and AuxK did not pick
them). Plain Adam still moves them: the momentum of their last gradients decays over the next
steps and goes on pushing the weights, each step by up to the learning rate whatever that
gradient's size. A latent that has just dropped out of every token's top k is so pushed further
below the cut, the way its last gradients lowered it, and many never fire again. Zeroing the
momentum of such a latent before the step makes Adam leave its weights exactly where they are
(its second moment decays as plain Adam's does); when it next gets a gradient, it starts
afresh.

Measured on the quality benchmark's workload (topk, 48 / 96 / 192 steps, docs/LOG.md seventh
session): as low a held-out FVU (0.1550 / 0.1260 / 0.1075 against 0.1549 / 0.1261 / 0.1080),
and latents that never fire on the 10.7k held-out tokens 8.6% -> 2.2%, 11.5% -> 2.6%, 11.8% ->
3.3%; on the 200k train tokens 0.31% -> 0%, 2.6% -> 0.02%, 6.2% -> 0.09%. Keeping the momentum
of idle latents instead (lazy Adam, as sparse embedding tables use it) gave 7.6% / 0.10% at
one epoch. relu (the quality benchmark's short-run flags): the same FVU at L0 36, dead 20.4% ->
11.3% held-out, 16.0% -> 1.4% over the train tokens. batchtopk measured slightly worse with it.
"""

from __future__ import annotations

import torch

from monoscope.sae import SparseAutoencoder

LATENT_AXES = {"W_enc": 1, "b_enc": 0, "W_dec": 0, "log_threshold": 0}
"""The axis that indexes latents in each per-latent parameter (b_dec is shared by all)."""


class IdleMomentumReset:
    """Call after the backward pass, before `optimizer.step()`: zeroes Adam's first moment on
    the latents whose gradient is zero this step. A latent is idle when its b_enc gradient is
    exactly zero: every latent that took part in the batch's loss has b_enc in its path."""

    def __init__(self, sae: SparseAutoencoder, optimizer: torch.optim.Optimizer) -> None:
        self.sae = sae
        self.optimizer = optimizer
        self.entries = [
            (p, LATENT_AXES[name]) for name, p in sae.named_parameters() if name in LATENT_AXES
        ]

    @torch.no_grad()
    def __call__(self) -> None:
        grad = self.sae.b_enc.grad
        if grad is None:
            return
        # A multiply rather than index_fill_ of the idle indices: no host sync on a GPU, at
        # 0.3 ms more on the CPU (0.9 against 0.6 ms a step for a 16 x 576 SAE).
        took_part = (grad != 0).to(grad.dtype)
        for p, axis in self.entries:
            momentum = self.optimizer.state.get(p, {}).get("exp_avg")
            if momentum is None:  # the first step: Adam has no moments yet
                continue
            shape = [1] * p.dim()
            shape[axis] = -1
            momentum.mul_(took_part.view(shape))
