"""TopK SAE (Gao et al. 2024, "Scaling and evaluating sparse autoencoders"), and what it shares
with BatchTopK: unit-norm decoder rows, the AuxK loss, sparse training kernels.

    z = ReLU(TopK_k(W_enc^T (x - b_dec) + b_enc))      (x normalised)
    x_hat = z W_dec + b_dec
    loss = ||x - x_hat||^2 / ||x - mean(x)||^2 + α AuxK      (α = coefficient, 1/32 in the paper)

AuxK: the top k_aux (d_in / 2, at most the number of dead latents) pre-activations among the
latents the trainer marks dead reconstruct the residual e = x - x_hat (without b_dec), scored
by the same normalised MSE: ||e - e_hat||^2 / ||e - mean(e)||^2; 0 when none is dead.

The training step (see sparse.py for the kernels): the pre-activations are computed without
grad a block of rows (`chunk_rows`) and of columns at a time, into one buffer no larger than
the step's [batch, d_in] residual, which then reuses it; each block is searched for its rows'
top k (and AuxK's top k_aux among the dead latents) while it is in cache, and the values of
the chosen entries are taken from it. The [batch, n_features] matrix never exists, nor any
[batch, d_in] copy of the input: x * scale - b_dec is formed a block at a time, and b_dec's
gradient through the encoder is -W_enc @ grad_b_enc. Under a trainer's `step_memory`, W_enc's
gradient is left to be formed after W_dec's has been stepped on and dropped, in its memory
(sparse.DeferredGradient, monoscope.train.step): one weight gradient alive at a time.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import ClassVar, NamedTuple

import torch
from torch import Tensor

from monoscope.sae.base import SparseAutoencoder, TrainStep, covariance_eigh
from monoscope.sae.blocks import block_rows
from monoscope.sae.sparse import (
    DeferredGradient,
    Pattern,
    TopGroups,
    merge_groups,
    sampled_affine,
    sparse_error,
    top_groups,
    topk_blocks,
    topk_rows,
)
from monoscope.sae.training import DEFAULT_K, SPARSITY_K, SampleStart, TrainingDefaults

GRADIENT_SLOT = "weight gradient"
"""The `StepMemory` slot W_dec's gradient and then W_enc's (deferred) lie in."""
AUXK_COEFFICIENT = 1 / 32
"""Gao et al.'s AuxK weight α: the coefficient to pass to `training_step` for topk/batchtopk."""
CUT_SAMPLE = 8192  # rows that set the firing cuts of `start_below_firing_cuts`

RowsPre = Callable[[Tensor], Tensor]
"""Pre-activations [r, n_features] (in the selection's dtype) of the rows of the batch given
by index [r], recomputed: for a `choose` that needs more of some rows than their candidates."""


class Selection(NamedTuple):
    """The latents a training batch keeps (and AuxK's), with their pre-activations [nnz] in
    pattern order; None where they are to be recomputed exactly (selection in bfloat16)."""

    pattern: Pattern
    pre: Tensor | None
    aux_pattern: Pattern | None
    aux_pre: Tensor | None


class TopKFamilySAE(SparseAutoencoder):
    """Unit-norm decoder rows, AuxK, and a training step that only touches selected latents.

    With `cfg.compute_dtype` 'bfloat16' the one dense product, which only chooses the latents,
    runs in bfloat16; the chosen pre-activations are then computed exactly (float32, sampled
    products), as is everything else: the latents are chosen by bfloat16 scores, but each
    step's values, loss and gradients are float32 for that choice.
    """

    subtracts_b_dec = True
    uses_k = True

    compute_dtypes: ClassVar[tuple[str, ...]] = ("float32", "bfloat16")
    sparsity: ClassVar[str] = SPARSITY_K
    start_settings: ClassVar[tuple[str, ...]] = ("decoder_init_power", "b_enc_init_share")
    training_defaults: ClassVar[TrainingDefaults]
    short_run_recipe: ClassVar[TrainingDefaults]
    paper_recipe: ClassVar[TrainingDefaults]

    @property
    def k(self) -> int:
        """Active latents per token (SAEConfig requires k of the k-sparse architectures)."""
        assert self.cfg.k is not None
        return self.cfg.k

    chunk_rows: ClassVar[int] = 256
    """Rows of pre-activations computed at a time while selecting. Their per-block temporaries
    (the encoder's input rows, each row's candidates) then stay under the trainer's mmap
    threshold (see blocks.py), rather than being mapped and faulted in afresh each time, and
    at 16 x 576 latents one column part holds the whole width (docs/LOG.md)."""
    column_block: ClassVar[int] = 1152
    """Columns per matmul call (cache-sized blocks: faster than one call per block of rows)."""

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator) -> None:
        # Gao et al.: decoder rows random unit vectors, encoder its transpose, biases 0 (the
        # trainer then moves b_dec to the data's geometric median with `init_b_dec`, and
        # fits the encoder's scale with `init_encoder_scale`).
        self.init_tied(generator)

    @torch.no_grad()
    def start_from_sample(self, sample: Tensor, start: SampleStart) -> None:
        """Decoder directions shaped by the data, the encoder's scale fitted, b_enc below the
        firing cuts, from raw training rows [n, d_in] (b_dec already set: the fits are about
        x - b_dec)."""
        if start.decoder_init_power > 0:
            self.shape_decoder_directions(sample, start.decoder_init_power)
        self.init_encoder_scale(sample)
        self.start_below_firing_cuts(sample, start.b_enc_init_share)

    @torch.no_grad()
    def shape_decoder_directions(self, sample: Tensor, power: float) -> None:
        """Map the decoder rows (random directions, as initialised) through Σ^power, Σ the
        covariance of the raw `sample` [n, d_in] in the normalised space, and renormalise them;
        the encoder becomes their transpose. The rows are then directions of N(0, Σ^power)
        draws: a small power leans them toward where the (anisotropic) residual stream varies,
        without the near-duplicates that decoder rows taken from data rows give (a lower FVU
        in short runs at 1/8: docs/LOG.md)."""
        eigenvalues, eigenvectors = covariance_eigh(self.normalise(sample))
        root = (eigenvectors * eigenvalues.clamp_min(0) ** power) @ eigenvectors.T
        rows = self.W_dec @ root.to(self.W_dec.dtype)  # root is symmetric
        rows /= torch.linalg.vector_norm(rows, dim=-1, keepdim=True).clamp_min(1e-12)
        self.W_dec.copy_(rows)
        self.W_enc.copy_(rows.t())

    @torch.no_grad()
    def init_encoder_scale(self, sample: Tensor, rows_per_pass: int = 1024) -> float:
        """Scale W_enc by the factor that makes the SAE's reconstruction of a raw sample
        [n, d_in] the least-squares best at that scale, and return the factor.

        With b_enc = 0 (as initialised) the choice of latents does not depend on the encoder's
        scale, so the factor is <x - b_dec, x̂ - b_dec> / ||x̂ - b_dec||² (normalised space).
        The transposed decoder alone overshoots: the latents a token picks are those most
        aligned with it, hence with one another. Gao et al. 2024 (§A.1) scale the encoder so
        that reconstructions match the inputs in norm, which ignores the angle between them;
        the least-squares scale fits both (docs/LOG.md).
        """
        factor = self.least_squares_scale(sample, rows_per_pass)
        if factor > 0:  # a non-positive fit (no signal at all) leaves the encoder as it is
            self.W_enc.mul_(factor)
        return factor

    @torch.no_grad()
    def start_below_firing_cuts(self, sample: Tensor, share: float) -> float:
        """Lower each latent's b_enc by `share` of its firing cut on the raw `sample` [n, d_in]
        (the pre-activation above which it is among the k / n_features largest of the sample),
        then scale the encoder's weights and bias together (which keeps the chosen latents) by
        the least-squares factor of the sample's reconstruction; return that factor.

        A latent whose pre-activations run high on every token (one aligned with a common
        direction) starts with a lower bias than one that fires on a narrow set, so the first
        batches spread over more latents: fewer dead latents (docs/LOG.md)."""
        if sample.shape[0] < 2 or share == 0:
            return 1.0
        self.b_enc.sub_(share * self.firing_cuts(sample[:CUT_SAMPLE], self.k))
        factor = self.least_squares_scale(sample)
        if factor > 0:  # no positive fit (no signal): left as it is
            self.W_enc.mul_(factor)
            self.b_enc.mul_(factor)
        return factor

    @abc.abstractmethod
    def candidates_per_row(self) -> int:
        """m: how many candidates each row offers to `choose`."""

    @abc.abstractmethod
    def candidates(self, pre: Tensor, offset: int) -> TopGroups:
        """Each row's candidates (its top m, as `TopGroups`), from the pre-activations of a
        block of rows and a part of the columns, as column blocks [nb, rows, w] (see
        `_pre_chunks`), the part's first latent being `offset`; `choose` picks the kept latents
        among the rows' candidates."""

    @abc.abstractmethod
    def choose(self, values: Tensor, indices: Tensor, rows_pre: RowsPre) -> tuple[Pattern, Tensor]:
        """The kept latents of the batch and their pre-activations [nnz] (pattern order), from
        every row's candidates [batch, m]; `rows_pre` recomputes rows if needed."""

    def training_step(
        self, x: Tensor, coefficient: float = AUXK_COEFFICIENT, dead_mask: Tensor | None = None
    ) -> TrainStep:
        # No [batch, d_in] copy of the input: the normalisation (x * scale, minus b_dec for the
        # encoder) is applied a block at a time while selecting, inside the sparse products'
        # gradients, and in the one [batch, d_in] tensor of the step, the residual x - x_hat.
        x = x.to(self.W_enc.dtype)
        shares = self.batch_shares  # x may be a slice of the batch: its share of the loss
        rows, scale = shares.rows(x), self.cfg.input_scale
        shift = self.b_dec if self.cfg.subtract_b_dec_in_encoder else None
        # One allocation serves the selection's blocks of pre-activations, then the residual.
        memory, size = self.step_memory, max(self._workspace_size(rows), x.numel())
        grad_W_dec = defer = None
        if memory is None:
            workspace = x.new_empty(size)
        else:
            # W_enc's gradient is formed after W_dec's is used and dropped, in its memory.
            grad_W_dec = memory.gradient(GRADIENT_SLOT, self.W_dec)
            workspace = memory.flat("workspace", size, x.dtype, x.device)
            defer = DeferredGradient(x, scale, shift)
        sel = self.select_latents(x.detach(), dead_mask, workspace)
        values = torch.relu(
            sampled_affine(
                x, self.W_enc, self.b_enc, sel.pattern, sel.pre, shift, scale, defer=defer
            )
        )
        residual = workspace[: x.numel()].view(x.shape)
        sse, residual = sparse_error(
            values, self.W_dec, sel.pattern, x, self.b_dec, scale, residual, grad_W_dec
        )
        del workspace
        fvu = sse / shares.total_variance(x, scale)
        aux = fvu.new_zeros(())
        if sel.aux_pattern is not None:
            aux = self._aux_loss(x, sel, shift, defer, residual)
        del residual
        active = values.detach() > 0
        # Counted with index_add_ rather than boolean indexing: no host sync on a GPU.
        counts = values.new_zeros(self.cfg.n_features)
        counts.index_add_(0, sel.pattern.col, active.to(values.dtype))
        return TrainStep(
            loss=fvu + coefficient * aux,
            mse=sse.detach() / rows,
            sparsity=aux.detach(),
            l0=active.sum().float() / rows,
            fired=counts > 0,
            fvu=fvu.detach(),
            deferred=() if defer is None else ((self.W_enc, defer),),
        )

    def _aux_loss(
        self,
        x: Tensor,
        sel: Selection,
        shift: Tensor | None,
        defer: DeferredGradient | None,
        residual: Tensor,
    ) -> Tensor:
        """AuxK: how well the selected dead latents reconstruct the `residual` [batch, d_in]
        of raw x, in its normalised MSE. Their W_dec gradient gets memory of its own
        (autograd adds it to the main one); their W_enc terms join the deferred ones."""
        assert sel.aux_pattern is not None  # called only when AuxK selected latents
        pre = sampled_affine(
            x,
            self.W_enc,
            self.b_enc,
            sel.aux_pattern,
            sel.aux_pre,
            shift,
            self.cfg.input_scale,
            defer=defer,
        )
        aux_sse, _ = sparse_error(torch.relu(pre), self.W_dec, sel.aux_pattern, residual)
        return aux_sse / self.batch_shares.total_variance(residual)

    @torch.no_grad()
    def select_latents(
        self, x: Tensor, dead_mask: Tensor | None = None, workspace: Tensor | None = None
    ) -> Selection:
        """The latents kept for raw activations x [batch, d_in] (and, when `dead_mask` marks
        dead latents, AuxK's top k_aux among them), from pre-activations computed a block of
        rows and columns at a time: the [batch, n_features] matrix never exists whole.
        `workspace`, a flat tensor of x's dtype with at least `_workspace_size(batch)`
        elements, holds the blocks (allocated here if not given)."""
        if workspace is None:
            workspace = x.new_empty(self._workspace_size(x.shape[0]))
        k_aux, dead_parts = self._dead_parts(dead_mask, x)
        parts = self._chunk_shape(x.shape[0])[0]
        m = self.candidates_per_row()
        # Every row's candidates, written a block of rows at a time: allocated before the
        # blocks' temporaries, so that none of them is held between those in the heap.
        values = x.new_empty(x.shape[0], m)
        indices = torch.empty(x.shape[0], m, dtype=torch.int64, device=x.device)
        aux_values: list[Tensor] = []
        aux_indices: list[Tensor] = []
        groups: list[TopGroups] = []
        aux_v: list[Tensor] = []
        aux_i: list[Tensor] = []
        for start, part, pre in self._pre_chunks(x, workspace):
            offset = part * pre.shape[0] * pre.shape[2]  # first latent of the part
            # Merged part by part: two parts' candidates at most are held at a time.
            groups = [merge_groups([*groups, self.candidates(pre, offset)], m)]
            if k_aux and dead_parts[part].numel():
                v, i = _top_dead(pre, dead_parts[part], k_aux)
                aux_v.append(v)
                aux_i.append(i + offset)
            if part == parts - 1:  # the block of rows is complete
                v, i = groups[0].finish(m)
                values[start : start + v.shape[0]] = v
                indices[start : start + v.shape[0]] = i
                if aux_v:
                    v, i = _merge(aux_v, aux_i, k_aux)
                    aux_values.append(v)
                    aux_indices.append(i)
                groups, aux_v, aux_i = [], [], []
        return self._selection(x, values, indices, aux_values, aux_indices)

    def _dead_parts(self, dead_mask: Tensor | None, x: Tensor) -> tuple[int, list[Tensor]]:
        """(k_aux, the dead latents of each column part as columns of that part) for the
        batch x: k_aux is d_in / 2, at most the number of dead latents (0: no AuxK)."""
        if dead_mask is None:
            return 0, []
        dead = dead_mask.to(x.device).nonzero().flatten()
        k_aux = min(self.cfg.d_in // 2, dead.numel())
        if not k_aux:
            return 0, []
        parts = self._chunk_shape(x.shape[0])[0]
        width = self.cfg.n_features // parts
        return k_aux, [
            dead[(dead >= p * width) & (dead < p * width + width)] - p * width for p in range(parts)
        ]

    def _selection(
        self,
        x: Tensor,
        values: Tensor,
        indices: Tensor,
        aux_values: list[Tensor],
        aux_indices: list[Tensor],
    ) -> Selection:
        """The batch's kept latents chosen among every row's candidates [batch, m], and
        AuxK's (given a block of rows at a time)."""

        def rows_pre(rows: Tensor) -> Tensor:
            dtype = self._selection_dtype()
            x_in = self.encoder_input(self.normalise(x[rows])).to(dtype)
            return torch.addmm(self.b_enc.to(dtype), x_in, self.W_enc.to(dtype))

        pattern, pre_values = self.choose(values, indices, rows_pre)
        aux_pattern = aux_pre = None
        if aux_values:
            aux_pattern, aux_pre = Pattern.from_rows(
                torch.cat(aux_indices), torch.cat(aux_values), self.cfg.n_features
            )
        if self._selection_dtype() != self.W_enc.dtype:
            # Chosen in a lower precision: sampled_affine recomputes the kept entries.
            return Selection(pattern, None, aux_pattern, None)
        return Selection(pattern, pre_values, aux_pattern, aux_pre)

    def _selection_dtype(self) -> torch.dtype:
        if self.cfg.compute_dtype == "bfloat16" and self.W_enc.dtype == torch.float32:
            return torch.bfloat16
        return self.W_enc.dtype

    def _chunk_shape(self, rows: int) -> tuple[int, int, int]:
        """(column parts, rows per block of rows, block width w): see `selection_layout`."""
        itemsize = torch.finfo(self._selection_dtype()).bits // 8
        budget = rows * self.cfg.d_in * self.W_enc.element_size()
        return selection_layout(self.cfg.n_features, rows, itemsize, budget)

    def _workspace_size(self, rows: int) -> int:
        """Elements of the parameters' dtype that `select_latents` needs for `rows` rows."""
        parts, size, w = self._chunk_shape(rows)
        itemsize = torch.finfo(self._selection_dtype()).bits // 8
        blocks = self.cfg.n_features // w // parts
        return -(-blocks * size * w * itemsize // self.W_enc.element_size())

    def _pre_chunks(self, x: Tensor, workspace: Tensor) -> Iterator[tuple[int, int, Tensor]]:
        """(first row, column part, pre-activations as column blocks [nb / parts, rows, w]) per
        `chunk_rows` rows of raw x and column part; each is written into `workspace`, valid
        until the next one."""
        dtype = self._selection_dtype()
        W, b = self.W_enc.to(dtype), self.b_enc.to(dtype)
        parts, size, w = self._chunk_shape(x.shape[0])
        nb = self.cfg.n_features // w // parts
        buffer = workspace.view(dtype)[: nb * size * w].view(nb, size, w)
        for start in range(0, x.shape[0], size):
            stop = min(start + size, x.shape[0])
            x_in = self.encoder_input(self.normalise(x[start:stop])).to(dtype)
            pre = buffer[:, : stop - start]
            for part in range(parts):
                for block in range(nb):
                    columns = slice((part * nb + block) * w, (part * nb + block + 1) * w)
                    torch.addmm(b[columns], x_in, W[:, columns], out=pre[block])
                yield start, part, pre

    @torch.no_grad()
    def before_optimizer_step(self) -> None:
        # Keep rows on the unit sphere to first order: drop the gradient along each row.
        grad, W = self.W_dec.grad, self.W_dec
        if grad is None:
            return
        rows = block_rows(W.shape[1] * W.element_size())
        for g, w in zip(grad.split(rows), W.split(rows), strict=True):
            # A block at a time, so the products below stay in cache.
            along = torch.linalg.vecdot(g, w) / torch.linalg.vecdot(w, w).clamp_min(1e-24)
            g.addcmul_(along.unsqueeze(1), w, value=-1.0)

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        for w in self.W_dec.split(block_rows(self.W_dec.shape[1] * self.W_dec.element_size())):
            w.div_(torch.linalg.vector_norm(w, dim=-1, keepdim=True).clamp_min(1e-12))


def selection_layout(
    n_features: int, rows: int, itemsize: int, budget: int
) -> tuple[int, int, int]:
    """(column parts, rows per block of rows, block width w) of the training step's selection
    over `rows` rows: a block of rows is computed one column part at a time, as column blocks
    [nb / parts, rows, w], of `itemsize` bytes an entry. w is the column block, or the largest
    divisor of n_features down to half of it (1024 for a power of two), or failing both the
    whole width. The parts are the fewest (a divisor of nb) whose buffer fits in `budget`
    bytes (the step's [rows, d_in] residual, which then reuses it: the selection costs no
    memory of its own)."""
    block = TopKFamilySAE.column_block
    divisors = [w for w in range(block, block // 2 - 1, -1) if n_features % w == 0]
    w = divisors[0] if divisors else n_features
    nb, size = n_features // w, min(TopKFamilySAE.chunk_rows, rows)
    fits = [p for p in range(1, nb + 1) if nb % p == 0 and nb // p * size * w * itemsize <= budget]
    return (fits[0] if fits else nb), size, w


def _top_dead(pre: Tensor, columns: Tensor, k_aux: int) -> tuple[Tensor, Tensor]:
    """AuxK's candidates in a column part: each row's top k_aux pre-activations among the
    dead `columns` [c >= 1] of the part, from its column blocks `pre` [nb, rows, w], with
    their columns in the part."""
    if columns.numel() == pre.shape[0] * pre.shape[2]:
        return topk_blocks(pre, k_aux)
    w = pre.shape[2]
    dead_pre = pre[columns // w, :, columns % w].t().contiguous()
    v, i = topk_rows(dead_pre, min(k_aux, columns.numel()))
    return v, columns[i]


def _merge(
    values: list[Tensor], indices: list[Tensor], values_per_row: int
) -> tuple[Tensor, Tensor]:
    """Each row's top `values_per_row` of candidates given in parts ([rows, m_p] each)."""
    if len(values) == 1:
        return values[0], indices[0]
    merged, position = torch.cat(values, 1).topk(values_per_row, dim=-1, sorted=False)
    return merged, torch.cat(indices, 1).gather(1, position)


class TopKSAE(TopKFamilySAE):
    arch = "topk"
    data_parallel = True  # its loss is sums over rows: each slice's share adds up
    feature_shardable = True  # monoscope.sae.sharded.ShardedTopKSAE
    # Gao et al.: AuxK 1/32, b_dec at the geometric median, Adam (0.9, 0.999) at lr 1e-4 (their
    # code's default), nothing else changed. Their Adam eps (6.25e-10) is not set: torch's.
    paper_recipe = TrainingDefaults(
        lr=1e-4,
        coefficient=AUXK_COEFFICIENT,
        adam_beta1=0.9,
        lr_warmup_fraction=0.0,
        b_dec_init="median",
        k=DEFAULT_K,
    )
    # Tuned on 46-192 steps of 200k tokens (docs/LOG.md): the lr and its warm-up, β1, the
    # decoder's lr multiple and start, the eigenbasis, the idle-momentum reset, the b_enc start.
    short_run_recipe = TrainingDefaults(
        lr=4e-3,
        coefficient=AUXK_COEFFICIENT,
        adam_beta1=0.8,
        lr_warmup_fraction=0.1,
        b_dec_init="median",
        decoder_lr_multiple=4.0,
        decoder_init_power=0.125,
        adam_basis="eigen",
        idle_momentum="reset",
        b_enc_init_share=0.25,
        k=DEFAULT_K,
    )
    # The short-run recipe without the decoder's 4x lr, which helps short runs only: at 2M
    # tokens, loss recovered is higher without it (docs/LOG.md, 2026-12-07).
    training_defaults = replace(short_run_recipe, decoder_lr_multiple=1.0)

    def candidates_per_row(self) -> int:
        return self.k

    def candidates(self, pre: Tensor, offset: int) -> TopGroups:
        return top_groups(pre, self.k, offset, self.cfg.n_features)

    def choose(self, values: Tensor, indices: Tensor, rows_pre: RowsPre) -> tuple[Pattern, Tensor]:
        return Pattern.from_rows(indices, values, self.cfg.n_features)

    def encode(self, x: Tensor) -> Tensor:
        pre = self.pre_activations(x)
        flat = pre.reshape(-1, pre.shape[-1])
        values, indices = topk_rows(flat, self.k)
        return torch.zeros_like(flat).scatter_(-1, indices, torch.relu(values)).view(pre.shape)

    @torch.no_grad()
    def sparse_codes(self, x: Tensor) -> tuple[Pattern, Tensor]:
        # The training step's selection: a block of pre-activations at a time, searched while
        # in cache, instead of `encode`'s [rows, n_features] codes searched twice.
        x = x.to(self.W_enc.dtype)
        sel = self.select_latents(x)
        shift = self.b_dec if self.cfg.subtract_b_dec_in_encoder else None
        # The selection's values, or (chosen in bfloat16) the kept entries computed exactly.
        pre = sampled_affine(
            self.prepare_rows(x),  # the rows as select_latents read them (per-token norm)
            self.W_enc,
            self.b_enc,
            sel.pattern,
            sel.pre,
            shift,
            self.cfg.input_scale,
        )
        return sel.pattern, torch.relu(pre)  # k per row, ReLU's zeros among them
