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

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from monoscope.sae.base import SparseAutoencoder, TrainStep
from monoscope.sae.config import SAEConfig
from monoscope.sae.training import (
    L0_SAMPLE_ROWS,
    SPARSITY_PENALTY,
    SampleStart,
    TrainingDefaults,
)

# April 2024 update: decoder rows start as random directions of a fixed norm, "0.05 to 1"
# working well; we take 0.1.
INIT_DECODER_NORM = 0.1


class ReluSAE(SparseAutoencoder):
    arch = "relu"
    data_parallel = True  # its loss is sums over rows: each slice's share adds up
    convention = "f*||W_dec_i||"
    compute_dtypes = ("float32", "bfloat16")
    sparsity = SPARSITY_PENALTY
    start_settings = ("target_l0",)
    # The April 2024 update as reimplemented (a secondary source): λ = 5 in the convention
    # E‖x‖² ≈ d, Adam β1 0.9, no lr warm-up, zero biases.
    paper_recipe = TrainingDefaults(
        lr=5e-5, coefficient=5.0, adam_beta1=0.9, lr_warmup_fraction=0.0, b_dec_init="zero"
    )
    # For a few hundred steps (docs/LOG.md): a faster lr, the decoder's at 5x, b_dec at the
    # median, a lower starting λ, the idle-momentum reset.
    short_run_recipe = TrainingDefaults(
        lr=2e-3,
        coefficient=1.5,
        adam_beta1=0.9,
        lr_warmup_fraction=0.0,
        b_dec_init="median",
        decoder_lr_multiple=5.0,
        idle_momentum="reset",
    )
    # At 2M tokens (463 steps) the published recipe is nowhere near sparse (L0 1201, loss
    # recovered 88.3%) where this one reaches L0 17 and 99.1% (docs/LOG.md, 2026-12-07).
    training_defaults = short_run_recipe

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__(cfg)
        # The training step's buffers (the [block, n_features] values, and ReLU's mask of a
        # block of their columns), kept between steps: fresh ones every step cost page faults
        # (too big for the heap, they are mapped and unmapped each time). Dropped by eval().
        self._block: tuple[Tensor, Tensor] | None = None

    def train(self, mode: bool = True) -> ReluSAE:
        if not mode:
            self._block = None
        return super().train(mode)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator) -> None:
        self.init_tied(generator, decoder_norm=INIT_DECODER_NORM)

    @torch.no_grad()
    def start_from_sample(self, sample: Tensor, start: SampleStart) -> None:
        """With a --target-l0, start at that L0 on raw training rows [n, d_in]."""
        if start.target_l0:
            self.start_at_l0(sample[:L0_SAMPLE_ROWS], start.target_l0)

    @torch.no_grad()
    def start_at_l0(self, sample: Tensor, l0: float, columns_per_pass: int = 1024) -> None:
        """Lower b_enc so that each latent fires on about l0 / n_features of the raw `sample`
        [n, d_in]: the run starts at the mean L0 it targets rather than at about half the
        latents, which the L1 penalty would otherwise silence in the first steps, leaving most
        of them dead for good in a short run (docs/LOG.md)."""
        if sample.shape[0] < 2:
            return
        self.b_enc.sub_(self.firing_cuts(sample, l0, columns_per_pass))  # each cut becomes 0

    def decoder_norms(self) -> Tensor:
        """||W_dec_i|| per latent [n_features]."""
        return self.W_dec.norm(dim=-1)

    def encode(self, x: Tensor) -> Tensor:
        return torch.relu(self.pre_activations(x)) * self.decoder_norms()

    def decoder_codes(self, x: Tensor) -> Tensor:
        return torch.relu(self.pre_activations(x))  # before the decoder norms' reporting factor

    def decode(self, f: Tensor) -> Tensor:
        # f is f_i ||W_dec_i||, so it multiplies unit directions; all-zero rows stay zero.
        norms = self.decoder_norms().clamp_min(torch.finfo(self.W_dec.dtype).tiny)
        unit_rows = self.W_dec / norms[:, None]
        return (f.to(self.W_dec.dtype) @ unit_rows + self.b_dec) / self.cfg.input_scale

    def training_step(
        self, x: Tensor, coefficient: float, dead_mask: Tensor | None = None
    ) -> TrainStep:
        x = x.to(self.W_enc.dtype)
        shares = self.batch_shares  # x may be a slice of the batch: its share of the loss
        rows, scale = shares.rows(x), self.cfg.input_scale
        shift = self.b_dec if self.cfg.subtract_b_dec_in_encoder else None
        dtype = torch.bfloat16 if self.cfg.compute_dtype == "bfloat16" else self.W_enc.dtype
        shape = (min(x.shape[0], _ROW_BLOCK), self.cfg.n_features)
        if self._block is None or (
            (self._block[0].shape, self._block[0].dtype, self._block[0].device)
            != (shape, dtype, x.device)
        ):
            self._block = (
                x.new_empty(shape, dtype=dtype),
                x.new_empty(shape[0], min(shape[1], _PRODUCT_BLOCK), dtype=torch.bool),
            )
        loss, sse, l1, active, column_sums = _ReluStep.apply(
            x,
            self.W_enc,
            self.b_enc,
            self.W_dec,
            self.b_dec,
            shift,
            scale,
            coefficient,
            rows,
            *self._block,
            torch.is_grad_enabled(),
        )
        with torch.no_grad():
            variance = shares.total_variance(x, scale)
        return TrainStep(
            loss=loss,
            mse=sse / rows,
            sparsity=l1,
            l0=(active / rows).float(),
            fired=column_sums > 0,
            fvu=sse / variance,
        )


_ROW_BLOCK = 384
"""Rows of the batch per block of `_ReluStep`: its [block, n_features] buffers are the step's
only tensors of that width (13.5 + 3.4 MiB at 9,216 latents in float32): as fast as larger
blocks, and a lower peak (benchmarks/train.py, docs/LOG.md)."""


class _ReluStep(torch.autograd.Function):
    """The ReLU SAE's training loss and its gradients, a block of rows of the batch at a time.

        pre = (x * scale - shift) W_enc + b_enc,  f = ReLU(pre),  x_hat = f W_dec + b_dec
        e = x * scale - x_hat,  loss = Σ||e||^2 / batch + λ Σ_i colsum(f)_i ||W_dec_i|| / batch

    The loss is a sum over rows, so a block's share of every gradient is final once the block
    is done: the forward pass forms the gradients as it goes (five matmuls of a block's size:
    two forward, three backward) and the backward pass hands them back, times the incoming
    gradient. So no [batch, n_features] tensor exists, only a [block, n_features] buffer
    (`block`), which holds f and then, in place, d loss / d pre (a block of columns at a time,
    ReLU's mask of those in `mask`, bool [block, _PRODUCT_BLOCK]). The L1 term is
    colsum(f) · norms, so neither f * norms nor its gradient exists as a [block, F] tensor;
    the constants of the gradient ride on the matmuls (alpha, and the bias of d/df). The
    matmuls and the buffer are in the buffer's dtype (bfloat16 or the parameters'); the
    residual, the loss, the sums and the gradients are in the parameters' dtype. With
    `want_grads` False (no grad mode) only the loss and its statistics are computed.
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
        rows: int,
        block: Tensor,
        mask: Tensor,
        want_grads: bool,
    ) -> tuple[Tensor, ...]:
        dtype = block.dtype  # rows: the whole batch's (x may be a process's slice of it)
        need = [want_grads and n for n in ctx.needs_input_grad[:6]]
        grads = _Gradients.allocate(need, x, W_enc, b_enc, W_dec, b_dec)
        W_enc_c, W_dec_c, b_enc_c = W_enc.to(dtype), W_dec.to(dtype), b_enc.to(dtype)
        b_dec_c = b_dec.to(dtype)
        norms = torch.linalg.vector_norm(W_dec, dim=-1)
        c = -2.0 / rows  # d loss / d x_hat = c * e
        a = coefficient / rows  # d loss / d f_bi (L1) = a * norms_i
        d_f_bias = (norms * a).to(dtype)
        column_sums = torch.zeros_like(b_enc)
        sse = x.new_zeros(())
        active = torch.zeros((), dtype=torch.int64, device=x.device)
        for start in range(0, x.shape[0], block.shape[0]):
            x_b = x[start : start + block.shape[0]]
            f = block[: x_b.shape[0]]
            # pre reads x_in = x * scale - shift; without a shift the scale rides on the
            # matmuls (alpha) instead of a scaled copy of the block.
            if shift is None:
                x_in_c, in_scale = x_b.to(dtype), scale
            else:
                x_in_c, in_scale = (x_b * scale).sub_(shift).to(dtype), 1.0
            _product_into(f, b_enc_c, x_in_c, W_enc_c, alpha=in_scale)
            f.relu_()
            column_sums += f.sum(0, dtype=column_sums.dtype)
            active += torch.count_nonzero(f)  # no temporary, unlike a sum
            e = torch.mul(x_b, scale)  # x - x_hat, formed in place where the dtypes allow
            if dtype == e.dtype:
                e.sub_(b_dec_c).addmm_(f, W_dec_c, alpha=-1.0)
            else:
                e.sub_(torch.addmm(b_dec_c, f, W_dec_c))
            flat = e.view(-1)
            sse += torch.dot(flat, flat)
            if grads.wanted():
                block_rows = slice(start, start + x_b.shape[0])
                grads.add_block(
                    block_rows, f, e, x_in_c, in_scale, (W_enc_c, W_dec_c), d_f_bias, mask, c, scale
                )
        l1 = torch.dot(column_sums, norms) / rows
        if grads.W_dec is not None:  # L1 part: a colsum_i W_dec_i / ||W_dec_i||
            tiny = torch.finfo(norms.dtype).tiny
            grads.W_dec.addcmul_(W_dec, (a * column_sums / norms.clamp_min(tiny)).unsqueeze(1))
        ctx.grads = grads.handed_over(W_enc, need)
        ctx.mark_non_differentiable(sse, l1, active, column_sums)
        return sse / rows + coefficient * l1, sse, l1, active, column_sums

    @staticmethod
    def backward(ctx: Any, grad: Tensor, *_: Any) -> tuple[Tensor | None, ...]:
        if ctx.grads is None:
            raise RuntimeError(
                "a ReLU SAE training step supports one backward pass (its gradients are "
                "handed over, not kept): retain_graph is not supported"
            )
        grads, ctx.grads = ctx.grads, None  # handed over: the step holds no copy
        g = float(grad)
        if g != 1.0:
            grads = tuple(None if t is None else t.mul_(g) for t in grads)
        return (*grads, None, None, None, None, None, None)


@dataclass
class _Gradients:
    """`_ReluStep`'s gradient accumulators, each None where not wanted."""

    x: Tensor | None
    W_enc: Tensor | None
    W_dec: Tensor | None
    b_dec: Tensor | None
    pre_sums: Tensor | None
    """Σ over rows of d loss / d pre: b_enc's gradient, and shift's through W_enc."""

    @classmethod
    def allocate(
        cls, need: list[bool], x: Tensor, W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, b_dec: Tensor
    ) -> _Gradients:
        """Zeroed accumulators for the inputs `need` marks (x, W_enc, b_enc, W_dec, b_dec,
        shift)."""
        need_x, need_W_enc, need_b_enc, need_W_dec, need_b_dec, need_shift = need
        return cls(
            x=torch.empty_like(x) if need_x else None,
            W_enc=torch.zeros_like(W_enc) if need_W_enc else None,
            W_dec=torch.zeros_like(W_dec) if need_W_dec else None,
            b_dec=torch.zeros_like(b_dec) if need_b_dec else None,
            pre_sums=torch.zeros_like(b_enc) if (need_b_enc or need_shift) else None,
        )

    def wanted(self) -> bool:
        grads = (self.x, self.W_enc, self.W_dec, self.b_dec, self.pre_sums)
        return any(t is not None for t in grads)

    def add_block(
        self,
        rows: slice,
        f: Tensor,
        e: Tensor,
        x_in_c: Tensor,
        in_scale: float,
        weights_c: tuple[Tensor, Tensor],
        d_f_bias: Tensor,
        mask: Tensor,
        c: float,
        scale: float,
    ) -> None:
        """Add the share of the batch's `rows`, from their codes f [block, F] (overwritten
        with d loss / d pre), residual e [block, d_in], encoder input x_in_c and the weights
        (W_enc, W_dec) in f's dtype."""
        W_enc_c, W_dec_c = weights_c
        e_c = e.to(f.dtype)
        if self.W_dec is not None:  # reconstruction part: c f^T e
            _add_product(self.W_dec, f.t(), e if f.dtype == self.W_dec.dtype else e_c, c)
        if self.b_dec is not None:
            self.b_dec.add_(e.sum(0), alpha=c)
        # f becomes d loss / d pre: d loss / d f written over it, through ReLU's mask.
        _product_into(f, d_f_bias, e_c, W_dec_c.t(), alpha=c, where_positive=mask)
        if self.pre_sums is not None:
            self.pre_sums += f.sum(0, dtype=self.pre_sums.dtype)
        if self.W_enc is not None:  # pre reads x_in: x_in^T d_pre
            _add_product(self.W_enc, x_in_c.t(), f, in_scale)
        if self.x is not None:
            g = torch.mm(f, W_enc_c.t()).to(e.dtype).mul_(scale)
            self.x[rows] = g.add_(e, alpha=-c * scale)

    def handed_over(self, W_enc: Tensor, need: list[bool]) -> tuple[Tensor | None, ...]:
        """The gradients of (x, W_enc, b_enc, W_dec, b_dec, shift)."""
        grad_shift = None
        if need[5]:
            assert self.pre_sums is not None  # summed whenever shift needs its gradient
            grad_shift = -(W_enc @ self.pre_sums)
        grad_b_enc = self.pre_sums if need[2] else None
        return (self.x, self.W_enc, grad_b_enc, self.W_dec, self.b_dec, grad_shift)


_PRODUCT_BLOCK = 1152
"""Columns (or rows) per matmul of `_add_product` and `_product_into`."""


def _product_into(
    out: Tensor,
    bias: Tensor,
    a: Tensor,
    b: Tensor,
    alpha: float = 1.0,
    where_positive: Tensor | None = None,
) -> None:
    """out = bias + alpha * a @ b for out [rows, n], a block of columns at a time (see
    `_add_product`); with `where_positive` (bool scratch [rows, _PRODUCT_BLOCK] at least),
    only where out was positive before, 0 elsewhere (a ReLU's backward, its mask a block of
    columns at a time)."""
    for start in range(0, out.shape[1], _PRODUCT_BLOCK):
        part = slice(start, start + _PRODUCT_BLOCK)
        target = out[:, part]
        off = None
        if where_positive is not None:
            off = torch.le(target, 0, out=where_positive[: target.shape[0], : target.shape[1]])
        torch.addmm(bias[part], a, b[:, part], alpha=alpha, out=target)
        if off is not None:
            target.masked_fill_(off, 0.0)


def _add_product(out: Tensor, a: Tensor, b: Tensor, alpha: float = 1.0) -> None:
    """out += alpha * a @ b, a block of out's longer side at a time: MKL keeps the packing
    buffers of its largest call for the life of the process (~13 MiB for a whole [576, 9216]
    gradient from 512 rows, ~5 MiB in blocks of 1152, at the same speed); in a lower precision
    than out, a block's product is formed and then added."""
    tall = out.shape[0] >= out.shape[1]
    for start in range(0, out.shape[0 if tall else 1], _PRODUCT_BLOCK):
        part = slice(start, start + _PRODUCT_BLOCK)
        a_part, b_part = (a[part], b) if tall else (a, b[:, part])
        target = out[part] if tall else out[:, part]
        if a.dtype == out.dtype:
            target.addmm_(a_part, b_part, alpha=alpha)
        else:
            target.add_(torch.mm(a_part, b_part), alpha=alpha)
