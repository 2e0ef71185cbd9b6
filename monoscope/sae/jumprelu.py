"""JumpReLU SAE (Rajamanoharan et al. 2024, "Jumping Ahead"; as trained for Gemma Scope).

    f = pre * H(pre - θ),  pre = W_enc^T x + b_enc,  θ = exp(log_threshold) per latent
    x_hat = f W_dec + b_dec
    loss = ||x - x_hat||^2 + λ ||f||_0

H has no useful derivative, so θ learns through straight-through estimators with a rectangle
kernel K of width ε (cfg.jumprelu_bandwidth): for the JumpReLU, d/dθ = -(θ/ε) K((pre - θ)/ε);
for the L0 term, d/dθ = -(1/ε) K((pre - θ)/ε); pre gets the exact gradient H(pre - θ) from the
JumpReLU and none from the L0 term.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from monoscope.sae.base import SparseAutoencoder, TrainStep
from monoscope.sae.config import SAEConfig
from monoscope.sae.training import (
    L0_SAMPLE_ROWS,
    SPARSITY_PENALTY,
    SampleStart,
    TrainingDefaults,
)


def _rectangle(u: Tensor) -> Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_pre = grad * (pre > threshold)
        kernel = _rectangle((pre - threshold) / eps)
        grad_threshold = (-(threshold / eps) * kernel * grad).sum(0)
        return grad_pre, grad_threshold, None


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, Tensor, None]:
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_threshold = (-(1.0 / eps) * _rectangle((pre - threshold) / eps) * grad).sum(0)
        return None, grad_threshold, None


def jumprelu(pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
    """pre * H(pre - threshold) for pre [batch, n]; straight-through gradient for threshold [n]."""
    return _JumpReLU.apply(pre, threshold, bandwidth)


def step(pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
    """H(pre - threshold) for pre [batch, n]; straight-through gradient for threshold [n] only."""
    return _Step.apply(pre, threshold, bandwidth)


class JumpReLUSAE(SparseAutoencoder):
    arch = "jumprelu"
    data_parallel = True  # its loss is sums over rows: each slice's share adds up
    sparsity = SPARSITY_PENALTY
    start_settings = ("target_l0",)
    # Rajamanoharan et al.'s reference trainer: Adam (0, 0.999) at lr 7e-5, zero biases. Its
    # 1000-step lr warm-up has no length-free form and is not applied; λ of the L0 penalty, in
    # units of the summed MSE, is ours (the paper's depends on its normalisation).
    paper_recipe = TrainingDefaults(
        lr=7e-5, coefficient=0.5, adam_beta1=0.0, lr_warmup_fraction=0.0, b_dec_init="zero"
    )
    # Gemma Scope's zero biases, at a faster lr for short runs.
    short_run_recipe = TrainingDefaults(
        lr=1e-3, coefficient=0.5, adam_beta1=0.9, lr_warmup_fraction=0.0, b_dec_init="zero"
    )
    # At 2M tokens neither recipe is sparse without --target-l0 (docs/LOG.md, 2026-12-07).
    training_defaults = short_run_recipe

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__(cfg)
        self.log_threshold = nn.Parameter(torch.zeros(cfg.n_features))

    @property
    def threshold(self) -> Tensor:
        """θ per latent [n_features] (learned as its log, so it stays positive)."""
        return self.log_threshold.exp()

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator) -> None:
        # Gemma Scope: decoder rows random unit directions, encoder its transpose, biases 0,
        # every threshold at jumprelu_init_threshold.
        self.init_tied(generator)
        self.log_threshold.fill_(math.log(self.cfg.jumprelu_init_threshold))

    @torch.no_grad()
    def start_from_sample(self, sample: Tensor, start: SampleStart) -> None:
        """With a --target-l0, start at that L0 on raw training rows [n, d_in]."""
        if start.target_l0:
            self.start_at_l0(sample[:L0_SAMPLE_ROWS], start.target_l0)

    @torch.no_grad()
    def start_at_l0(self, sample: Tensor, l0: float, columns_per_pass: int = 1024) -> None:
        """Start at the mean L0 a run targets, on the raw `sample` [n, d_in]: each threshold
        where its latent fires on about l0 / n_features of the sample, then the encoder's
        weights, bias and thresholds scaled together (which keeps the same latents firing) by
        the least-squares factor of the sample's reconstruction. From the tied start, about
        half the latents fire and the reconstruction is far too large (FVU ~50 on Gaussian
        data with 16x latents), which the L0 controller takes many steps to undo."""
        if sample.shape[0] < 2:
            return
        cuts = self.firing_cuts(sample, l0, columns_per_pass)
        # Thresholds stay positive (they are learned as logs).
        self.log_threshold.copy_(cuts.clamp_min(self.cfg.jumprelu_init_threshold).log())
        factor = self.least_squares_scale(sample)
        if factor > 0:  # no positive fit (no signal): left as it is
            self.W_enc.mul_(factor)
            self.b_enc.mul_(factor)
            self.log_threshold.add_(math.log(factor))

    def encode(self, x: Tensor) -> Tensor:
        pre = self.pre_activations(x)
        return pre * (pre > self.threshold)

    def training_step(
        self, x: Tensor, coefficient: float, dead_mask: Tensor | None = None
    ) -> TrainStep:
        x_norm = self.normalise(x)
        pre = torch.addmm(self.b_enc, self.encoder_input(x_norm), self.W_enc)
        threshold = self.threshold
        bandwidth = self.cfg.jumprelu_bandwidth
        f = jumprelu(pre, threshold, bandwidth)
        x_hat = torch.addmm(self.b_dec, f, self.W_dec)
        squared_error, total_variance = self._reconstruction_stats(x_norm, x_hat)
        # x may be a process's slice of the batch: its share of the whole batch's means.
        mse = self.batch_shares.mean(squared_error)
        l0 = self.batch_shares.mean(step(pre, threshold, bandwidth).sum(-1))
        active = f.detach() != 0
        return TrainStep(
            loss=mse + coefficient * l0,
            mse=mse.detach(),
            sparsity=l0.detach(),
            l0=l0.detach(),
            fired=active.any(0),
            fvu=(squared_error.sum() / total_variance).detach(),
        )
