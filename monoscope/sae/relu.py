"""ReLU SAE with an L1 penalty weighted by decoder norms (Anthropic, Scaling Monosemanticity 2024,
trained as in the April 2024 update of Circuits Updates).

    f = ReLU(W_enc^T x + b_enc)          (x normalised; b_dec not subtracted)
    x_hat = f W_dec + b_dec
    loss = ||x - x_hat||^2 + λ Σ_i f_i ||W_dec_i||

No constraint on decoder norms: the penalty weighs each f_i by its row's norm, so the loss is
invariant to rescaling a row by c and its encoder column and bias by 1/c. Features are reported
as f_i ||W_dec_i|| (as Scaling Monosemanticity reports them), which has the same invariance.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from monoscope.sae.base import SparseAutoencoder, TrainStep, random_directions, total_variance
from monoscope.sae.config import SAEConfig

# April 2024 update: decoder rows start as random directions of a fixed norm, "0.05 to 1"
# working well; we take 0.1.
INIT_DECODER_NORM = 0.1


class ReluSAE(SparseAutoencoder):
    arch = "relu"
    compute_dtypes = ("float32", "bfloat16")

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__(cfg)
        # The training step's [batch, n_features] buffer, once its backward is done with it:
        # a fresh one every step costs ~40 ms of page faults at 4096 x 9216 (it is too big for
        # the heap, so it is mapped and unmapped each time). Dropped by eval().
        self._spare: list[Tensor] = []

    def train(self, mode: bool = True) -> ReluSAE:
        if not mode:
            self._spare.clear()
        return super().train(mode)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator) -> None:
        W_dec = random_directions(self.cfg.n_features, self.cfg.d_in, generator) * INIT_DECODER_NORM
        self.W_dec.copy_(W_dec)
        self.W_enc.copy_(W_dec.t())
        self.b_enc.zero_()
        self.b_dec.zero_()

    def decoder_norms(self) -> Tensor:
        """||W_dec_i|| per latent [n_features]."""
        return self.W_dec.norm(dim=-1)

    def encode(self, x: Tensor) -> Tensor:
        return torch.relu(self.pre_activations(x)) * self.decoder_norms()

    def decode(self, f: Tensor) -> Tensor:
        # f is f_i ||W_dec_i||, so it multiplies unit directions; all-zero rows stay zero.
        norms = self.decoder_norms().clamp_min(torch.finfo(self.W_dec.dtype).tiny)
        unit_rows = self.W_dec / norms[:, None]
        return (f.to(self.W_dec.dtype) @ unit_rows + self.b_dec) / self.cfg.input_scale

    def training_step(
        self, x: Tensor, coefficient: float, dead_mask: Tensor | None = None
    ) -> TrainStep:
        x = x.to(self.W_enc.dtype)
        rows, scale = x.shape[0], self.cfg.input_scale
        shift = self.b_dec if self.cfg.subtract_b_dec_in_encoder else None
        dtype = torch.bfloat16 if self.cfg.compute_dtype == "bfloat16" else self.W_enc.dtype
        shape = (rows, self.cfg.n_features)
        spare = self._spare.pop() if self._spare else None
        if (
            spare is None
            or spare.shape != shape
            or spare.dtype != dtype
            or spare.device != x.device
        ):
            spare = x.new_empty(shape, dtype=dtype)
        loss, sse, l1, active, column_sums = _ReluStep.apply(
            x,
            self.W_enc,
            self.b_enc,
            self.W_dec,
            self.b_dec,
            shift,
            scale,
            coefficient,
            spare,
            self._spare,
        )
        if not loss.requires_grad:  # no backward will come to hand the buffer back
            self._spare.append(spare)
        with torch.no_grad():
            variance = total_variance(x, scale)
        return TrainStep(
            loss=loss,
            mse=sse / rows,
            sparsity=l1,
            l0=(active / rows).float(),
            fired=column_sums > 0,
            fvu=sse / variance,
        )


_ROW_BLOCK = 512
"""Rows of [batch, n_features] handled at a time by the elementwise work of `_ReluStep`, so
that it runs on cache-sized blocks right after (or before) their matmul."""


class _ReluStep(torch.autograd.Function):
    """The ReLU SAE's training loss with hand-written gradients, on one [batch, n_features]
    buffer: f = ReLU(pre) in the forward, overwritten by the gradient w.r.t. pre in the
    backward.

        pre = (x * scale - shift) W_enc + b_enc,  f = ReLU(pre),  x_hat = f W_dec + b_dec
        e = x * scale - x_hat,  loss = Σ||e||^2 / batch + λ Σ_i colsum(f)_i ||W_dec_i|| / batch

    Five matmuls of the encoder's size (two forward, three backward), no more: the L1 term
    is colsum(f) · norms, so neither f * norms nor its gradient exists as a [batch, F] tensor;
    the constants of the gradient ride on the matmuls (alpha, and the bias of d/df). The
    matmuls and the [batch, F] buffer are in `dtype` (bfloat16 or the parameters' dtype); the
    residual, the loss, the sums and the gradients handed back are in the parameters' dtype.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        W_enc: Tensor,
        b_enc: Tensor,
        W_dec: Tensor,
        b_dec: Tensor,
        shift: Tensor | None,
        scale: float,
        coefficient: float,
        f: Tensor,
        spare: list[Tensor],
    ) -> tuple[Tensor, ...]:
        rows, dtype = x.shape[0], f.dtype
        W_dec_c = W_dec.to(dtype)
        x_in = x * scale
        if shift is not None:
            x_in -= shift
        # One matmul call: ~20 ms faster than one per block of rows (W_enc is packed once).
        torch.addmm(b_enc.to(dtype), x_in.to(dtype), W_enc.to(dtype), out=f)
        del x_in
        column_sums = torch.zeros_like(b_enc)
        active = torch.zeros((), dtype=torch.float64, device=x.device)
        for start in range(0, rows, _ROW_BLOCK):
            block = f[start : start + _ROW_BLOCK]
            block.relu_()
            column_sums += block.sum(0, dtype=column_sums.dtype)
            # f >= 0, so sign(f) is 1 where active: ~15x faster than count_nonzero here. The
            # sum is exact in float32 below 2^24 per block; the total is kept in float64.
            active += block.sign().sum(dtype=torch.float32)
        x_hat = torch.addmm(b_dec.to(dtype), f, W_dec_c)
        residual = torch.mul(x, scale).sub_(x_hat)  # x - x_hat, in the parameters' dtype
        del x_hat
        flat = residual.view(-1)
        sse = torch.dot(flat, flat)
        norms = torch.linalg.vector_norm(W_dec, dim=-1)
        l1 = torch.dot(column_sums, norms) / rows
        ctx.save_for_backward(x, W_enc, W_dec, shift, f, residual, norms, column_sums)
        ctx.scale, ctx.coefficient, ctx.spare, ctx.done = scale, coefficient, spare, False
        ctx.mark_non_differentiable(sse, l1, active, column_sums)
        return sse / rows + coefficient * l1, sse, l1, active, column_sums

    @staticmethod
    def backward(ctx: Any, grad: Tensor, *_: Any) -> tuple[Tensor | None, ...]:
        if ctx.done:
            raise RuntimeError(
                "a ReLU SAE training step supports one backward pass (it overwrites its "
                "activations with their gradient): retain_graph is not supported"
            )
        ctx.done = True
        x, W_enc, W_dec, shift, f, residual, norms, column_sums = ctx.saved_tensors
        need_x, need_W_enc, need_b_enc, need_W_dec, need_b_dec, need_shift = ctx.needs_input_grad[
            :6
        ]
        rows, scale, dtype = x.shape[0], ctx.scale, f.dtype
        g = float(grad)
        c = -2.0 * g / rows  # d loss / d x_hat = c * residual
        a = ctx.coefficient * g / rows  # d loss / d f_bi (L1) = a * norms_i
        residual_c, W_dec_c = residual.to(dtype), W_dec.to(dtype)
        grad_x = grad_W_enc = grad_b_enc = grad_W_dec = grad_b_dec = grad_shift = None
        if need_W_dec:
            # Reconstruction: c f^T e; L1: a colsum_i W_dec_i / ||W_dec_i||.
            tiny = torch.finfo(norms.dtype).tiny
            grad_W_dec = W_dec * (a * column_sums / norms.clamp_min(tiny)).unsqueeze(1)
            if dtype == grad_W_dec.dtype:
                grad_W_dec.addmm_(f.t(), residual, alpha=c)
            else:
                grad_W_dec.add_(torch.mm(f.t(), residual_c), alpha=c)
        if need_b_dec:
            grad_b_dec = residual.sum(0).mul_(c)
        if need_x:
            grad_x = residual * (-c * scale)
        # f becomes d loss / d pre, a block of rows at a time: ReLU's mask applied while the
        # block is in cache, and no second [batch, F] tensor.
        sums = torch.zeros_like(norms)
        bias = (norms * a).to(dtype)
        for start in range(0, rows, _ROW_BLOCK):
            block = f[start : start + _ROW_BLOCK]
            d_f = torch.addmm(bias, residual_c[start : start + _ROW_BLOCK], W_dec_c.t(), alpha=c)
            torch.ops.aten.threshold_backward.grad_input(d_f, block, 0.0, grad_input=block)
            sums += block.sum(0, dtype=sums.dtype)
        grad_pre = f
        if need_b_enc or need_shift:
            grad_b_enc = sums
        if need_W_enc:
            # pre reads x * scale - shift: scale x^T d_pre - shift ⊗ colsum(d_pre).
            # As d_pre^T @ x ([F, d], then transposed): ~8% faster than x^T @ d_pre here.
            grad_W_enc = torch.mm(grad_pre.t(), x.to(dtype)).t()
            grad_W_enc = grad_W_enc.to(W_enc.dtype, memory_format=torch.contiguous_format)
            grad_W_enc.mul_(scale)
            if shift is not None:
                grad_W_enc.addr_(shift, sums, alpha=-1.0)
        if need_x:
            grad_x.add_(torch.mm(grad_pre, W_enc.to(dtype).t()), alpha=scale)
        if need_shift:
            grad_shift = -(W_enc @ sums)
        if not ctx.spare:
            ctx.spare.append(f)  # the next step may reuse the buffer
        return (
            grad_x,
            grad_W_enc,
            grad_b_enc if need_b_enc else None,
            grad_W_dec,
            grad_b_dec,
            grad_shift,
            None,
            None,
            None,
            None,
        )
