"""BatchTopK SAE (Bussmann, Leask and Nanda 2024, "BatchTopK Sparse Autoencoders").

Training keeps the top batch * k pre-activations of the whole batch (after ReLU), so tokens
share a budget of k per token on average; otherwise as TopK (unit-norm decoder rows, AuxK).
Inference cannot depend on the batch: it uses a threshold, f = pre * (pre > θ). The paper
estimates θ as the mean over training batches of the smallest kept activation; here θ is the
smallest activation the batch rule keeps over a sample of training rows with the final weights
(`calibrate_threshold`, called by the trainer when training ends): the same cut, without the
cuts of earlier weights mixed in (a running mean over a short run kept far more than k latents
per token: docs/LOG.md). θ is kept in cfg.batchtopk_threshold, so that saved SAEs carry it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from monoscope.sae.sparse import (
    Pattern,
    TopGroups,
    batch_topk_indices,
    sampled_affine,
    top_groups,
)
from monoscope.sae.topk import AUXK_COEFFICIENT, RowsPre, TopKFamilySAE
from monoscope.sae.training import DEFAULT_K, TrainingDefaults

CANDIDATES_PER_K = 2
"""Each row offers its top CANDIDATES_PER_K * k pre-activations to the batch-wide selection;
a row holding more of the batch's top is recomputed in full (see `choose`). 2 is fastest on
the demo workload (4: candidates cost more; 1: too many rows recomputed)."""


class BatchTopKSAE(TopKFamilySAE):
    arch = "batchtopk"
    data_parallel = True  # the batch-wide selection is made across processes (`choose`)
    # Bussmann et al.: AuxK as Gao's, Adam (0.9, 0.999) at 2e-4 / √(F / 2^14), b_dec at the
    # geometric median.
    paper_recipe = TrainingDefaults(
        lr=2e-4,
        lr_reference_features=2**14,
        coefficient=AUXK_COEFFICIENT,
        adam_beta1=0.9,
        lr_warmup_fraction=0.0,
        b_dec_init="median",
        k=DEFAULT_K,
    )
    # As topk's short-run recipe, at its own lr and decoder multiple; the eigenbasis and the
    # idle-momentum reset measured no gain for it (docs/LOG.md).
    short_run_recipe = TrainingDefaults(
        lr=2.5e-3,
        coefficient=AUXK_COEFFICIENT,
        adam_beta1=0.8,
        lr_warmup_fraction=0.1,
        b_dec_init="median",
        decoder_lr_multiple=5.0,
        decoder_init_power=0.125,
        b_enc_init_share=0.25,
        k=DEFAULT_K,
    )
    # At 2M tokens it beats the published recipe on the typical rows and in loss recovered
    # (docs/LOG.md, 2026-12-07); both overshoot on the rare huge-norm rows at inference.
    training_defaults = short_run_recipe

    def candidates_per_row(self) -> int:
        return min(self.cfg.n_features, CANDIDATES_PER_K * self.k)

    def candidates(self, pre: Tensor, offset: int) -> TopGroups:
        m = min(pre.shape[0] * pre.shape[2], self.candidates_per_row())
        return top_groups(pre, m, offset, self.cfg.n_features)

    def choose(self, values: Tensor, indices: Tensor, rows_pre: RowsPre) -> tuple[Pattern, Tensor]:
        if self.batch_shares.parts > 1:
            return self._choose_across_processes(values, indices, rows_pre)
        # The batch's top rows * k among the rows' candidates: exact for every row whose
        # weakest candidate does not beat the weakest value kept, `floor` (its other entries
        # are below it). A row whose does ("saturated": it may hold more of the top than its
        # candidates) is recomputed, and all its entries of at least `floor` compete instead.
        rows, m = values.shape
        n, cols = rows * self.k, self.cfg.n_features
        kept, position = values.flatten().topk(n, sorted=False)
        flat = (position // m) * cols + indices.flatten()[position]
        if m == cols:
            return Pattern.from_flat(flat, kept, rows, cols)
        floor = kept.min()
        saturated = (values.amin(1) > floor).nonzero().flatten()
        if saturated.numel() == 0:
            return Pattern.from_flat(flat, kept, rows, cols)
        others = torch.ones(rows, dtype=torch.bool, device=values.device)
        others[saturated] = False
        row = torch.arange(rows, device=values.device)[others]
        flats = [(row[:, None] * cols + indices[others]).flatten()]
        pool = [values[others].flatten()]
        for block in saturated.split(self.chunk_rows):
            pre = rows_pre(block)
            r, c = (pre >= floor).nonzero(as_tuple=True)
            flats.append(block[r] * cols + c)
            pool.append(pre[r, c])
        kept, position = torch.cat(pool).topk(n, sorted=False)
        return Pattern.from_flat(torch.cat(flats)[position], kept, rows, cols)

    def _choose_across_processes(
        self, values: Tensor, indices: Tensor, rows_pre: RowsPre
    ) -> tuple[Pattern, Tensor]:
        """`choose` for this process's slice of a batch spread over processes (`batch_shares`):
        the whole batch's top rows * k, found with two all-gathers of n values each. The n-th
        largest candidate of all processes is the floor below which no entry can be kept; this
        process's saturated rows are recomputed against it, as in one process; then the n-th
        largest of every process's pool is the cut, and each keeps its entries at or above it
        (a tie at the cut keeps both, where one process keeps one of them)."""
        shares = self.batch_shares
        rows, m = values.shape
        n, cols = shares.rows(values) * self.k, self.cfg.n_features
        flat = (torch.arange(rows, device=values.device)[:, None] * cols + indices).flatten()
        pool = values.flatten()
        floor = shares.nth_largest(pool, n)
        saturated = (values.amin(1) > floor).nonzero().flatten() if m < cols else None
        if saturated is not None and saturated.numel():
            others = torch.ones(rows, dtype=torch.bool, device=values.device)
            others[saturated] = False
            flats, pools = [flat.view(rows, m)[others].flatten()], [values[others].flatten()]
            for block in saturated.split(self.chunk_rows):
                pre = rows_pre(block)
                r, c = (pre >= floor).nonzero(as_tuple=True)
                flats.append(block[r] * cols + c)
                pools.append(pre[r, c])
            flat, pool = torch.cat(flats), torch.cat(pools)
        kept = pool >= shares.nth_largest(pool, n)
        return Pattern.from_flat(flat[kept], pool[kept], rows, cols)

    @torch.no_grad()
    def calibrate_threshold(self, sample: Tensor) -> float:
        """Set and return θ: the smallest activation the batch rule keeps over raw rows
        `sample` [n, d_in] (n * k of them), so that thresholding keeps k latents per row on
        average over the sample."""
        if sample.shape[0] == 0:
            raise ValueError("calibrating the batchtopk threshold needs a sample of rows")
        x = sample.to(self.W_enc.dtype)
        selection = self.select_latents(x)
        kept = selection.pre
        if kept is None:  # chosen in bfloat16: the kept entries, exactly
            shift = self.b_dec if self.cfg.subtract_b_dec_in_encoder else None
            kept = sampled_affine(
                x, self.W_enc, self.b_enc, selection.pattern, None, shift, self.cfg.input_scale
            )
        positive = kept[kept > 0]
        threshold = float(positive.min()) if positive.numel() else 0.0
        self.cfg.batchtopk_threshold = threshold
        return threshold

    def after_training(self, sample: Tensor) -> None:
        self.calibrate_threshold(sample)

    def encode(self, x: Tensor) -> Tensor:
        pre = self.pre_activations(x)
        if self.training:
            flat = pre.reshape(-1, pre.shape[-1])
            keep = batch_topk_indices(flat, flat.shape[0] * self.k)
            kept = torch.zeros_like(flat).view(-1)
            kept[keep] = torch.relu(flat.view(-1)[keep])
            return kept.view(pre.shape)
        threshold = self.cfg.batchtopk_threshold
        if threshold is None:
            raise RuntimeError(
                "this batchtopk SAE has no inference threshold yet (set when training ends): "
                "call .calibrate_threshold(sample) with training rows, or .train() to encode "
                "with the batch top-k rule"
            )
        return pre * (pre > threshold)
