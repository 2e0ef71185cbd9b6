"""TopK SAE (Gao et al. 2024, "Scaling and evaluating sparse autoencoders"), and what it shares
with BatchTopK: unit-norm decoder rows, the AuxK loss, sparse training kernels.

    z = ReLU(TopK_k(W_enc^T (x - b_dec) + b_enc))      (x normalised)
    x_hat = z W_dec + b_dec
    loss = ||x - x_hat||^2 / ||x - mean(x)||^2 + α AuxK      (α = coefficient, 1/32 in the paper)

AuxK: the top k_aux (d_in / 2, at most the number of dead latents) pre-activations among the
latents the trainer marks dead reconstruct the residual e = x - x_hat (without b_dec), scored
by the same normalised MSE: ||e - e_hat||^2 / ||e - mean(e)||^2; 0 when none is dead.
"""

from __future__ import annotations

import abc

import torch
from torch import Tensor

from monoscope.sae.base import SparseAutoencoder, TrainStep, random_directions
from monoscope.sae.sparse import Pattern, sampled_affine, sparse_decode

AUXK_COEFFICIENT = 1 / 32
"""Gao et al.'s AuxK weight α: the coefficient to pass to `training_step` for topk/batchtopk."""


class TopKFamilySAE(SparseAutoencoder):
    """Unit-norm decoder rows, AuxK, and a training step that only touches selected latents."""

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator) -> None:
        # Gao et al.: decoder rows random unit vectors, encoder its transpose, biases 0 (the
        # trainer may then move b_dec to the data's geometric median with `init_b_dec`).
        W_dec = random_directions(self.cfg.n_features, self.cfg.d_in, generator)
        self.W_dec.copy_(W_dec)
        self.W_enc.copy_(W_dec.t())
        self.b_enc.zero_()
        self.b_dec.zero_()

    @abc.abstractmethod
    def select(self, pre: Tensor) -> Pattern:
        """The latents a training batch keeps, from its pre-activations [batch, n_features]."""

    def training_step(
        self, x: Tensor, coefficient: float = AUXK_COEFFICIENT, dead_mask: Tensor | None = None
    ) -> TrainStep:
        x_norm = self.normalise(x)
        x_in = self.encoder_input(x_norm)
        with torch.no_grad():
            # The one dense cost, forward only: choose the active latents.
            pre = torch.addmm(self.b_enc, x_in, self.W_enc)
            pattern = self.select(pre)
            aux_pattern = self._aux_pattern(pre, dead_mask)
        values = torch.relu(sampled_affine(x_in, self.W_enc, self.b_enc, pattern, pre))
        aux_values = (
            torch.relu(sampled_affine(x_in, self.W_enc, self.b_enc, aux_pattern, pre))
            if aux_pattern is not None
            else None
        )
        del pre  # [batch, n_features]: free it before the rest of the step
        x_hat = sparse_decode(values, self.W_dec, pattern) + self.b_dec
        squared_error, total_variance = self._reconstruction_stats(x_norm, x_hat)
        fvu = squared_error.sum() / total_variance
        aux = fvu.new_zeros(())
        if aux_pattern is not None and aux_values is not None:
            residual = (x_norm - x_hat).detach()
            residual_hat = sparse_decode(aux_values, self.W_dec, aux_pattern)
            aux = (residual - residual_hat).pow(2).sum() / (
                (residual - residual.mean(0)).pow(2).sum().clamp_min(1e-12)
            )
        active = values.detach() > 0
        self.observe(values.detach(), pattern)
        # Counted with index_add_ rather than boolean indexing: no host sync on a GPU.
        counts = values.new_zeros(self.cfg.n_features)
        counts.index_add_(0, pattern.col, active.to(values.dtype))
        return TrainStep(
            loss=fvu + coefficient * aux,
            mse=squared_error.mean().detach(),
            sparsity=aux.detach(),
            l0=active.sum().float() / x_norm.shape[0],
            fired=counts > 0,
            fvu=fvu.detach(),
        )

    def observe(self, values: Tensor, pattern: Pattern) -> None:
        """Hook for statistics of the kept activations [nnz] of a training step (batchtopk
        learns its threshold here)."""

    def _aux_pattern(self, pre: Tensor, dead_mask: Tensor | None) -> Pattern | None:
        if dead_mask is None:
            return None
        # Ascending, so the pattern's columns stay sorted within each row.
        dead = dead_mask.to(pre.device).nonzero().flatten()
        k_aux = min(self.cfg.d_in // 2, dead.numel())
        if k_aux == 0:
            return None
        top = pre[:, dead].topk(k_aux, dim=-1, sorted=False).indices
        return Pattern.from_row_indices(dead[top], self.cfg.n_features)

    @torch.no_grad()
    def before_optimizer_step(self) -> None:
        # Keep rows on the unit sphere to first order: drop the gradient along each row.
        grad, W = self.W_dec.grad, self.W_dec
        if grad is not None:
            squared_norms = torch.einsum("fd,fd->f", W, W).clamp_min(1e-24)
            along = torch.einsum("fd,fd->f", grad, W) / squared_norms
            grad.addcmul_(along[:, None], W, value=-1.0)

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        self.W_dec /= self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12)


class TopKSAE(TopKFamilySAE):
    arch = "topk"

    def select(self, pre: Tensor) -> Pattern:
        top = pre.topk(self.cfg.k, dim=-1, sorted=False).indices
        return Pattern.from_row_indices(top, pre.shape[-1])

    def encode(self, x: Tensor) -> Tensor:
        pre = self.pre_activations(x)
        top = pre.topk(self.cfg.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter_(-1, top.indices, torch.relu(top.values))
