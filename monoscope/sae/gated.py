"""Gated SAE (Rajamanoharan et al. 2024, "Improving Dictionary Learning with Gated Sparse
Autoencoders"), as SAELens saves it (arch 'gated'); read, not trained, by monoscope.

    x_in = x - b_dec (where subtract_b_dec_in_encoder; x normalised)
    gate = H(x_in W_enc + b_enc)                     (b_enc: SAELens' b_gate)
    f = gate * ReLU(x_in (W_enc exp(r_mag)) + b_mag)
    x_hat = f W_dec + b_dec

The magnitude path shares W_enc, each latent's column rescaled by exp(r_mag).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from monoscope.sae.base import SparseAutoencoder, TrainStep
from monoscope.sae.config import SAEConfig


class GatedSAE(SparseAutoencoder):
    """A gate (the shared encoder with b_enc) decides which latents fire; a magnitude path
    (the encoder rescaled by exp(r_mag), with b_mag) sets their values."""

    arch = "gated"
    subtracts_b_dec = True

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__(cfg)
        self.r_mag = nn.Parameter(torch.zeros(cfg.n_features))
        self.b_mag = nn.Parameter(torch.zeros(cfg.n_features))

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator) -> None:
        """Tied random unit directions, biases and r_mag 0 (SAELens' start)."""
        self.init_tied(generator)
        self.r_mag.zero_()
        self.b_mag.zero_()

    def encode(self, x: Tensor) -> Tensor:
        """Raw x [..., d_in] -> [..., n_features]: magnitudes where the gate is open."""
        x_in = self.encoder_input(self.normalise(x))
        gate = (x_in @ self.W_enc + self.b_enc) > 0
        magnitude = torch.relu(x_in @ (self.W_enc * self.r_mag.exp()) + self.b_mag)
        return magnitude * gate

    def training_step(
        self, x: Tensor, coefficient: float, dead_mask: Tensor | None = None
    ) -> TrainStep:
        raise ValueError("gated SAEs are read (SAELens imports), not trained by monoscope")
