"""`apply_sharded_gradients`: the optimizer's part of a feature-sharded step
(monoscope.sae.sharded), as `apply_gradients` (step.py) is a whole SAE's.

Each process steps its own slice (and the replicated b_dec, whose gradient is alike in every
process) with its own Adam: no gradient is all-reduced after the backward, the step's two
collectives already made each slice's gradient whole. Clipping needs the whole SAE's gradient
norm, so the slices' squared norms are summed over the processes; a deferred W_enc gradient
(left by the step under a `StepMemory`) is bounded without forming it, and formed at once only
where the bound reaches the clipping threshold, in every process alike (the decision is taken
on the summed bound).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from monoscope.sae.base import TrainStep
from monoscope.sae.sharded import ShardedTopKSAE
from monoscope.sae.sparse import DeferredGradient
from monoscope.sae.topk import GRADIENT_SLOT

_NORM_EPS = 1e-6  # clip_grad_norm_'s


@torch.no_grad()
def apply_sharded_gradients(
    sae: ShardedTopKSAE,
    optimizer: torch.optim.Optimizer,
    result: TrainStep,
    grad_clip: float,
    before_step: Callable[[], None] | None = None,
) -> None:
    """Step `optimizer` (over this process's parameters) on the gradients of
    `result.loss.backward()`: the decoder-row constraint, clipping at `grad_clip` by the whole
    SAE's norm (0: off), `before_step` (e.g. `IdleMomentumReset`), Adam; a deferred W_enc
    gradient is formed after the others have stepped and been dropped; gradients dropped."""
    deferred = [(p, g) for p, g in result.deferred if len(g)]
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
    sae: ShardedTopKSAE, deferred: list[tuple[torch.Tensor, DeferredGradient]], grad_clip: float
) -> bool:
    """Whether the whole SAE's gradient norm is surely below the point where clipping scales
    (the same answer in every process: the bound is summed over them)."""
    bound = sae.gradient_norm([g.norm_bound() ** 2 for _, g in deferred])
    return float(bound) * (1 + DeferredGradient.ROUNDING_MARGIN) + _NORM_EPS < grad_clip
