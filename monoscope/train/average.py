"""An exponential moving average of the parameters, saved as the trained SAE (`--weight-average`).

In a short TopK run the last iterate is noisy: Adam moves every weight by about the learning rate
whatever its gradient's signal, so the decoder rows of rarely firing latents wander. Averaging
the iterates cancels that wander where decaying the learning rate also slows the progress (a
lower held-out FVU in one epoch of the quality benchmark: docs/LOG.md). It costs one more copy
of the parameters, hence off by default.

Update n (1-based) weighs the new parameters by max(1/n, 1/τ): a plain mean over the first τ
steps, so the average never leans on the initialisation, then exponential with time constant τ.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class WeightAverage:
    """The running average of a module's parameters (names as in `named_parameters`)."""

    PREFIX = "average."

    def __init__(self, module: nn.Module, time_constant: float) -> None:
        if time_constant < 1:
            raise ValueError(f"the time constant is in steps, at least 1: {time_constant}")
        self.time_constant = time_constant
        self.updates = 0
        self.names = [name for name, _ in module.named_parameters()]
        self.averages = [p.detach().clone() for _, p in module.named_parameters()]

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        self.updates += 1
        weight = max(1.0 / self.updates, 1.0 / self.time_constant)
        for average, p in zip(self.averages, module.parameters(), strict=True):
            average.lerp_(p, weight)

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        for p, average in zip(module.parameters(), self.averages, strict=True):
            p.copy_(average)

    def tensors(self) -> dict[str, Tensor]:
        """The averages, for a checkpoint (the update count is the step, restored by `load`)."""
        return {self.PREFIX + name: t for name, t in zip(self.names, self.averages, strict=True)}

    def load(self, tensors: dict[str, Tensor], updates: int) -> None:
        missing = [n for n in self.names if self.PREFIX + n not in tensors]
        if missing:
            raise ValueError(f"the checkpoint holds no weight average of {', '.join(missing)}")
        for average, name in zip(self.averages, self.names, strict=True):
            average.copy_(tensors[self.PREFIX + name])
        self.updates = updates
