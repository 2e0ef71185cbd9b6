"""`StepMemory`: the memory of a training step's weight gradients, kept between steps.

A TopK step's largest tensors (the two weight gradients, and the selection's workspace that
then holds the residual: ~52 MiB at 16 x 576 latents) are too big for the heap, so they are
mapped afresh each step and every page of them is faulted in (and zeroed by the kernel) again:
~15 ms of a ~370 ms step here (docs/LOG.md, 2026-11-26). A `StepMemory` lends each step the
gradients' memory of the last one instead; and until the backward writes a gradient, its
memory is free for the step's own tensors (`inside_gradient`: the workspace lives in W_enc's),
so holding it between steps raises the peak by little.

The gradients are handed to autograd in that reused memory, so this is for a training loop
that, like monoscope's trainer, drops the gradients (`zero_grad(set_to_none=True)`) before the
next step and keeps no reference to them: the next step overwrites them. While a parameter's
`.grad` is still set (gradients accumulated over steps), its gradient gets fresh memory and
autograd adds it to the one held, as without a `StepMemory`.
"""

from __future__ import annotations

import torch
from torch import Tensor


class StepMemory:
    """Gradient memory lent to every training step of one SAE, by name; contents undefined
    on loan."""

    def __init__(self) -> None:
        self._held: dict[str, Tensor] = {}
        self._lent: set[str] = set()  # names whose memory this step's gradient will be in

    def gradient(self, name: str, param: Tensor) -> Tensor | None:
        """Memory for `param`'s next gradient, laid out as `param` (as autograd wants it),
        the same memory each step; None while `param.grad` is set (see the module's note)."""
        if param.grad is not None:
            self._lent.discard(name)
            return None
        held = self._held.get(name)
        layout = (param.shape, param.stride(), param.dtype, param.device)
        if held is None or (held.shape, held.stride(), held.dtype, held.device) != layout:
            held = self._held[name] = torch.empty_strided(
                param.shape, param.stride(), dtype=param.dtype, device=param.device
            )
        self._lent.add(name)
        # A tensor of its own on the same memory: autograd adopts a gradient as `.grad`
        # without a copy only if nothing else refers to that tensor object.
        return held.detach()

    def inside_gradient(self, name: str, numel: int) -> Tensor | None:
        """Flat memory [numel] (the gradient's dtype) inside the memory the last `gradient`
        call for `name` lent, for tensors whose last use comes before the backward writes that
        gradient; None if that call lent none, or too little."""
        held = self._held.get(name)
        if name not in self._lent or held is None or not held.is_contiguous():
            return None
        return held.view(-1)[:numel] if held.numel() >= numel else None
