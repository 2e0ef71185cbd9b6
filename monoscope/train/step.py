"""`apply_gradients`: the optimizer's part of a training step, after the backward.

Some gradients are left by the backward to be formed later (`TrainStep.deferred`; the TopK
step's W_enc gradient, see monoscope.sae.sparse.DeferredGradient): the parameters that have
theirs take their Adam step first and drop their gradients, then each deferred gradient is
formed, in the memory the dropped ones leave (`StepMemory`), and its parameter takes its step.
The peak then holds one weight gradient instead of two. Adam's update is per parameter, so
stepping in two calls changes no value.

Gradient clipping scales every gradient by one factor, which needs the norm of all of them
before any step. A deferred gradient's norm is bounded without forming it; when the bound
shows the total under the clipping threshold (the usual case: the TopK step's norms run in the
hundredths against a threshold of 1), the factor is exactly 1 and nothing is scaled, as
`clip_grad_norm_` would leave it; otherwise the deferred gradients are formed at once and
clipped with the others.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from monoscope.sae.base import TrainStep
from monoscope.sae.sharded import Trainable
from monoscope.sae.sparse import DeferredGradient
from monoscope.sae.topk import GRADIENT_SLOT

_NORM_EPS = 1e-6  # clip_grad_norm_'s: its factor is max_norm / (norm + 1e-6), at most 1


@torch.no_grad()
def apply_gradients(
    sae: Trainable,
    optimizer: torch.optim.Optimizer,
    result: TrainStep,
    grad_clip: float,
    before_step: Callable[[], None] | None = None,
    sum_gradients: Callable[[list[Tensor]], None] | None = None,
) -> None:
    """Step `optimizer` on the gradients of `result.loss.backward()`: summed by
    `sum_gradients` (a data-parallel run's all-reduce; deferred gradients are then formed
    first), the SAE's gradient constraint (`before_optimizer_step`), global-norm clipping at
    `grad_clip` (0: off), then `before_step` (e.g. `IdleMomentumReset`), then Adam; every
    gradient is dropped after."""
    deferred = [(p, g) for p, g in result.deferred if len(g)]
    if sum_gradients is not None:
        for param, grad in deferred:
            param.grad = grad.form()
        deferred = []
        sum_gradients(list(sae.parameters()))
    sae.before_optimizer_step()
    if grad_clip > 0:
        if deferred and not _under_clip(sae, deferred, grad_clip):
            for param, grad in deferred:
                param.grad = grad.form()
            deferred = []
        if not deferred:
            sae.clip_gradients(grad_clip)
    if before_step is not None:
        before_step()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    memory = sae.step_memory
    for param, grad in deferred:
        out = None if memory is None else memory.gradient(GRADIENT_SLOT, param)
        param.grad = grad.form(out)
        optimizer.step()  # Adam skips the parameters without a gradient: this one only
        optimizer.zero_grad(set_to_none=True)


def _under_clip(
    sae: Trainable, deferred: list[tuple[Tensor, DeferredGradient]], grad_clip: float
) -> bool:
    """Whether the whole SAE's gradient norm is surely below the point where clipping scales
    (with a margin for the rounding of the norms, which clip_grad_norm_ sums its own way)."""
    total = float(sae.gradient_norm([g.norm_bound() ** 2 for _, g in deferred]))
    return total * (1 + DeferredGradient.ROUNDING_MARGIN) + _NORM_EPS < grad_clip
