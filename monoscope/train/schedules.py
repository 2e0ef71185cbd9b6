"""Learning-rate and coefficient schedules, as pure functions of the step.

Learning rate: warmed up linearly from 0 over the first `warmup_fraction` of steps (none in the
April 2024 recipe; TopK's default for short runs), constant, then decayed linearly to 0 over the
last `decay_fraction` of steps (the April 2024 recipe).
Sparsity coefficient: warmed up linearly from 0 over the first `warmup_fraction` of steps.
"""

from __future__ import annotations


def learning_rate(
    step: int,
    total_steps: int,
    base: float,
    decay_fraction: float = 0.2,
    warmup_fraction: float = 0.0,
) -> float:
    """LR for `step` (0-based): linear from base / warm-up steps to base over the warm-up,
    base until the last decay_fraction of training, then linear to 0."""
    warmup = int(total_steps * warmup_fraction)
    factor = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    decay_start = int(total_steps * (1.0 - decay_fraction))
    if step < decay_start or total_steps <= decay_start:
        return base * factor
    return base * factor * (total_steps - step) / (total_steps - decay_start)


def coefficient_warmup(step: int, total_steps: int, warmup_fraction: float = 0.05) -> float:
    """Multiplier in [0, 1] of the sparsity coefficient: linear from 0 over the warm-up."""
    warmup = int(total_steps * warmup_fraction)
    if warmup <= 0:
        return 1.0
    return min(1.0, (step + 1) / warmup)
