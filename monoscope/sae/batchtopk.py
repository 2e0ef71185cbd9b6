"""BatchTopK SAE (Bussmann, Leask and Nanda 2024, "BatchTopK Sparse Autoencoders").

Training keeps the top batch * k pre-activations of the whole batch (after ReLU), so tokens
share a budget of k per token on average; otherwise as TopK (unit-norm decoder rows, AuxK).
Inference cannot depend on the batch: it uses a threshold, f = pre * (pre > θ), where θ is a
running mean of the smallest kept activation over training batches (the paper's estimate),
kept in cfg.batchtopk_threshold so that checkpoints and saved SAEs carry it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from monoscope.sae.sparse import Pattern, batch_topk_indices
from monoscope.sae.topk import TopKFamilySAE

THRESHOLD_RATE = 0.01
"""Weight of each batch in the running mean of the threshold (about the last 100 batches)."""


class BatchTopKSAE(TopKFamilySAE):
    arch = "batchtopk"

    def select(self, pre: Tensor) -> Pattern:
        rows, cols = pre.shape
        return Pattern.from_flat_indices(batch_topk_indices(pre, rows * self.cfg.k), rows, cols)

    @torch.no_grad()
    def observe(self, values: Tensor, pattern: Pattern) -> None:
        # One host sync per step (the trainer syncs per step for its metrics anyway).
        positive = values[values > 0]
        if positive.numel() == 0:
            return
        smallest = float(positive.min())
        previous = self.cfg.batchtopk_threshold
        self.cfg.batchtopk_threshold = (
            smallest if previous is None else previous + THRESHOLD_RATE * (smallest - previous)
        )

    def encode(self, x: Tensor) -> Tensor:
        pre = self.pre_activations(x)
        if self.training:
            flat = pre.reshape(-1, pre.shape[-1])
            keep = batch_topk_indices(flat, flat.shape[0] * self.cfg.k)
            kept = torch.zeros_like(flat).view(-1)
            kept[keep] = torch.relu(flat.view(-1)[keep])
            return kept.view(pre.shape)
        threshold = self.cfg.batchtopk_threshold
        if threshold is None:
            raise RuntimeError(
                "this batchtopk SAE has no inference threshold yet (it is learned in training); "
                "train it, or call .train() to encode with the batch top-k rule"
            )
        return pre * (pre > threshold)
