"""`--idle-momentum reset`: a latent that gets no gradient in a batch loses its Adam momentum.

In a TopK batch some latents get no gradient at all: they fired nowhere (and AuxK did not pick
them). Plain Adam still moves them: the momentum of their last gradients decays over the next
steps and goes on pushing the weights, each step by up to the learning rate whatever that
gradient's size. A latent that has just dropped out of every token's top k is so pushed further
below the cut, the way its last gradients lowered it, and many never fire again. Zeroing the
momentum of such a latent before the step makes Adam leave its weights exactly where they are
(its second moment decays as plain Adam's does); when it next gets a gradient, it starts
afresh.

On the quality benchmark (topk, relu) it keeps the held-out FVU and leaves far fewer dead
latents; batchtopk measured slightly worse with it (docs/LOG.md).
"""

from __future__ import annotations

import torch

from monoscope.sae.sharded import Trainable

LATENT_AXES = {"W_enc": 1, "b_enc": 0, "W_dec": 0, "log_threshold": 0}
"""The axis that indexes latents in each per-latent parameter (b_dec is shared by all)."""


class IdleMomentumReset:
    """Call after the backward pass, before `optimizer.step()`: zeroes Adam's first moment on
    the latents whose gradient is zero this step. A latent is idle when its b_enc gradient is
    exactly zero: every latent that took part in the batch's loss has b_enc in its path."""

    def __init__(self, sae: Trainable, optimizer: torch.optim.Optimizer) -> None:
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
        # a fraction of a millisecond more on the CPU (docs/LOG.md).
        took_part = (grad != 0).to(grad.dtype)
        for p, axis in self.entries:
            momentum = self.optimizer.state.get(p, {}).get("exp_avg")
            if momentum is None:  # the first step: Adam has no moments yet
                continue
            shape = [1] * p.dim()
            shape[axis] = -1
            momentum.mul_(took_part.view(shape))
