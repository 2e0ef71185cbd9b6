"""`StepMemory`: the memory of a training step's large tensors, kept between steps.

A TopK step's largest tensors (the weight gradients, 21 MiB each at 16 x 576 latents, and the
selection's workspace that then holds the residual, 9 MiB) are too big for the heap, so they
are mapped afresh each step and every page of them is faulted in (and zeroed by the kernel)
again: ~15 ms of a ~370 ms step here (docs/LOG.md, 2026-11-26). A `StepMemory` lends each step
the memory of the last one instead, in named slots. Gradients that are never alive together
share a slot: the TopK step leaves W_enc's gradient to be formed after W_dec's has been used
and dropped (sparse.py, `DeferredGradient`), so both live in one gradient's memory and the
step's peak holds one weight gradient, not two.

The gradients are handed to autograd in that reused memory, so this is for a training loop
that, like monoscope's trainer, drops the gradients (`zero_grad(set_to_none=True)`) before
the next step and keeps no reference to them: the next step overwrites them. While a
parameter's `.grad` is still set (gradients accumulated over steps), or the slot still holds
another parameter's gradient, its gradient gets fresh memory, as without a `StepMemory`.
"""

from __future__ import annotations

import torch
from torch import Tensor


class StepMemory:
    """Flat memory lent to every training step of one SAE, by slot name; contents undefined
    on loan."""

    def __init__(self) -> None:
        self._slots: dict[str, Tensor] = {}
        self._holders: dict[str, list[Tensor]] = {}  # parameters a slot's memory was lent to

    def gradient(self, slot: str, param: Tensor) -> Tensor | None:
        """Memory in `slot` for `param`'s next gradient, laid out as `param` (as autograd wants
        it); None while `param.grad` is set or the slot holds another parameter's gradient
        (see the module's note)."""
        if param.grad is not None or self._in_use(slot):
            return None
        flat = self.flat(slot, param.numel(), param.dtype, param.device)
        holders = self._holders.setdefault(slot, [])
        if not any(p is param for p in holders):
            holders.append(param)
        # A tensor of its own on that memory: autograd adopts a gradient as `.grad` without a
        # copy only if nothing else refers to that tensor object.
        return flat.as_strided(param.shape, param.stride())

    def flat(self, slot: str, numel: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """Flat memory [numel] in `slot` (grown, or of another dtype or device: replaced)."""
        held = self._slots.get(slot)
        if held is None or held.numel() < numel or (held.dtype, held.device) != (dtype, device):
            held = self._slots[slot] = torch.empty(numel, dtype=dtype, device=device)
        return held[:numel]

    def _in_use(self, slot: str) -> bool:
        """Whether a parameter's `.grad` still lies in `slot`'s memory."""
        held = self._slots.get(slot)
        if held is None:
            return False
        storage = held.untyped_storage().data_ptr()
        return any(
            p.grad is not None and p.grad.untyped_storage().data_ptr() == storage
            for p in self._holders.get(slot, [])
        )
