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

from monoscope.sae.sparse import Pattern, TopGroups, batch_topk_indices, top_groups
from monoscope.sae.topk import PreChunks, TopKFamilySAE

THRESHOLD_RATE = 0.01
"""Weight of each batch in the running mean of the threshold (about the last 100 batches)."""

CANDIDATES_PER_K = 4
"""Each row offers its top CANDIDATES_PER_K * k pre-activations to the batch-wide selection."""


class BatchTopKSAE(TopKFamilySAE):
    arch = "batchtopk"

    def candidates(self, pre: Tensor, offset: int) -> TopGroups:
        m = min(pre.shape[0] * pre.shape[2], CANDIDATES_PER_K * self.cfg.k)
        return top_groups(pre, m, offset, self.cfg.n_features)

    def choose(self, values: Tensor, indices: Tensor, chunks: PreChunks) -> tuple[Pattern, Tensor]:
        # The batch's top rows * k among the rows' candidates. Exact unless some row's weakest
        # candidate still beats the weakest kept value (that row may hold more): then a second
        # pass collects every entry at least that large, a superset of the true top.
        rows, m = values.shape
        n, cols = rows * self.cfg.k, self.cfg.n_features
        kept, position = values.flatten().topk(n, sorted=False)
        floor = kept.min()
        if m < cols and bool((values.amin(1) > floor).any()):
            return self._choose_above(floor, n, chunks)
        flat = (position // m) * cols + indices.flatten()[position]
        return Pattern.from_flat(flat, kept, rows, cols)

    def _choose_above(self, floor: Tensor, n: int, chunks: PreChunks) -> tuple[Pattern, Tensor]:
        cols = self.cfg.n_features
        flats, values, rows = [], [], 0
        for start, part, pre in chunks():
            block, row, col = (pre >= floor).nonzero(as_tuple=True)
            nb, size, w = pre.shape
            flats.append((row + start) * cols + (part * nb + block) * w + col)
            values.append(pre[block, row, col])
            rows = start + size
        kept, position = torch.cat(values).topk(n, sorted=False)
        return Pattern.from_flat(torch.cat(flats)[position], kept, rows, cols)

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
