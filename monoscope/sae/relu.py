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

import torch
from torch import Tensor

from monoscope.sae.base import SparseAutoencoder, TrainStep, random_directions

# April 2024 update: decoder rows start as random directions of a fixed norm, "0.05 to 1"
# working well; we take 0.1.
INIT_DECODER_NORM = 0.1


class ReluSAE(SparseAutoencoder):
    arch = "relu"

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
        x_norm = self.normalise(x)
        f = torch.relu(torch.addmm(self.b_enc, self.encoder_input(x_norm), self.W_enc))
        x_hat = torch.addmm(self.b_dec, f, self.W_dec)
        squared_error, total_variance = self._reconstruction_stats(x_norm, x_hat)
        mse = squared_error.mean()
        l1 = (f @ self.decoder_norms()).mean()  # Σ_i f_i ||W_dec_i||, mean over tokens
        active = f.detach() > 0
        return TrainStep(
            loss=mse + coefficient * l1,
            mse=mse.detach(),
            sparsity=l1.detach(),
            l0=active.sum(-1).float().mean(),
            fired=active.any(0),
            fvu=(squared_error.sum() / total_variance).detach(),
        )
