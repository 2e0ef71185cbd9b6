"""Feedback control of the sparsity coefficient to reach a requested mean L0.

With a fixed coefficient, the L0 an L1- or L0-penalised SAE ends at is hard to predict, and
users sweep coefficients by hand. This controller nudges the coefficient multiplicatively in
proportion to the log-ratio of the measured L0 (smoothed) to the target: a larger L0 than asked
raises the penalty, a smaller one lowers it. Multiplicative steps keep it positive and make the
gain scale-free across coefficients that differ by orders of magnitude.
"""

from __future__ import annotations

import math


class L0Controller:
    def __init__(
        self,
        target_l0: float,
        coefficient: float,
        gain: float = 0.02,
        smoothing: float = 0.9,
        max_step: float = 0.02,
    ) -> None:
        if target_l0 <= 0:
            raise ValueError(f"target_l0 must be positive, got {target_l0}")
        self.target = target_l0
        self.coefficient = coefficient
        self.gain = gain
        self.smoothing = smoothing
        self.max_step = max_step
        self.smoothed_l0: float | None = None

    def update(self, l0: float) -> float:
        """Feed the last batch's mean L0; returns the coefficient for the next step."""
        prev = self.smoothed_l0
        self.smoothed_l0 = l0 if prev is None else self.smoothing * prev + (1 - self.smoothing) * l0
        error = math.log(max(self.smoothed_l0, 1e-3) / self.target)
        # Bounded step: the SAE responds to a new coefficient only over many steps, and a
        # fast controller overshoots until every latent is dead (dead ReLU latents never return).
        self.coefficient *= math.exp(max(-self.max_step, min(self.max_step, self.gain * error)))
        return self.coefficient

    def state(self) -> dict:
        return {"coefficient": self.coefficient, "smoothed_l0": self.smoothed_l0}

    def load_state(self, state: dict) -> None:
        self.coefficient = state["coefficient"]
        self.smoothed_l0 = state["smoothed_l0"]
