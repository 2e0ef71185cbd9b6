"""Dead-latent tracking: tokens since each latent last fired.

Scaling Monosemanticity calls a feature dead when it has not fired in 10^7 tokens; small runs
scale the window down (the window in tokens is a config field and is written to the log).
"""

from __future__ import annotations

import torch
from torch import Tensor


class DeadLatentTracker:
    """Counts, per latent, the tokens seen since it last fired."""

    def __init__(
        self, n_features: int, window_tokens: int, device: torch.device | None = None
    ) -> None:
        self.window_tokens = window_tokens
        self.tokens_since_fired = torch.zeros(n_features, dtype=torch.int64, device=device)

    def update(self, fired: Tensor, n_tokens: int) -> None:
        """fired: [n_features] bool, whether each latent fired in a batch of n_tokens."""
        self.tokens_since_fired += n_tokens
        self.tokens_since_fired[fired] = 0

    @property
    def dead_mask(self) -> Tensor:
        """[n_features] bool: not fired within the window."""
        return self.tokens_since_fired >= self.window_tokens

    def dead_fraction(self) -> float:
        return float(self.dead_mask.float().mean())
