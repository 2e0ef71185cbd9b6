"""`ShardedTopKSAE`: one TopK SAE whose features are spread over the job's processes.

Process r of N holds a contiguous slice of the dictionary, features [r F/N, (r + 1) F/N):
W_enc's columns [d_in, F/N], b_enc [F/N] and W_dec's rows [F/N, d_in], with their gradients
and Adam state; b_dec [d_in] is replicated. Every process reads the same whole batch. A step:

1. each process's own top k of its slice per row (TopKSAE's blocked selection on the slice),
   then an all-gather of those candidates [batch, N k] and the global top k per row: each
   process keeps the chosen entries that fall in its slice (AuxK alike among the dead
   latents, k_aux = d_in / 2 at most the number dead in all slices);
2. the partial decode of its entries, summed over the processes (an all-reduce) plus b_dec;
3. the same FVU loss (and AuxK) as TopKSAE's, in every process.

Two collectives with Megatron-style gradients keep the gradients those of the unsharded SAE:
the partial decodes' sum is an all-reduce forward and the identity backward (every process
computes the same loss, so each gets the whole gradient of the sum: `_shard_error`); b_dec as
the encoder's input shift is the identity forward and an all-reduce backward (`_IntoShards`:
each process's encoder sees only its slice's part of that gradient). So every process's b_dec
gradient is whole and alike, and each slice's gradient is the unsharded gradient's slice.
Memory per process falls as 1/N but for b_dec and the step's few [batch, d_in] tensors.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor, nn

from monoscope.distributed import World, all_gather_cat, all_reduce_sum_
from monoscope.sae.base import (
    SparseAutoencoder,
    TrainStep,
    least_squares_factor,
    random_direction_rows,
)
from monoscope.sae.config import SAEConfig
from monoscope.sae.registry import archs_where, trained_class
from monoscope.sae.shares import total_variance
from monoscope.sae.sparse import (
    DeferredGradient,
    Pattern,
    sampled_affine,
    sparse_decode,
    sparse_error,
)
from monoscope.sae.step_memory import StepMemory
from monoscope.sae.topk import AUXK_COEFFICIENT, CUT_SAMPLE, GRADIENT_SLOT, TopKSAE
from monoscope.sae.training import SampleStart

_NORM_EPS = 1e-6  # clip_grad_norm_'s: its factor is max_norm / (norm + 1e-6), at most 1
SLICED = ("W_enc", "b_enc", "W_dec")
"""The parameters each process holds a slice of; b_dec is replicated."""


def features_of(whole: Tensor, name: str, span: slice) -> Tensor:
    """The `span` of features of the whole SAE's parameter `name` (a view): W_enc's columns
    [d_in, F], the rows of the others."""
    return whole[:, span] if name == "W_enc" else whole[span]


def check_shardable(cfg: SAEConfig, processes: int) -> None:
    """ValueError for an SAE that cannot be split by features over `processes`."""
    check_shardable_run(cfg.arch, cfg.n_features, cfg.k or 0, processes, cfg.compute_dtype)
    if cfg.input_norm != "none" or cfg.skip_connection:
        raise ValueError("--shard-features trains SAEs without input_norm or skip connection")


def check_shardable_run(
    arch: str, n_features: int, k: int, processes: int, compute_dtype: str = "float32"
) -> None:
    """ValueError for a training run that cannot split its dictionary over `processes`, naming
    what to change."""
    if not trained_class(arch).feature_shardable:
        shardable = archs_where(lambda cls: cls.feature_shardable)
        raise ValueError(f"--shard-features trains {shardable} SAEs only, not {arch}")
    if n_features % processes:
        raise ValueError(
            f"{n_features} features do not split into {processes} equal slices: use a "
            f"multiple of {processes} (--features)"
        )
    if n_features // processes < k:
        raise ValueError(
            f"--k {k} is more than a slice of {n_features // processes} features "
            f"({n_features} over {processes} processes): use fewer processes or more features"
        )
    if compute_dtype != "float32":
        raise ValueError("--shard-features trains with --compute-dtype float32")


class _IntoShards(torch.autograd.Function):
    """Forward: the identity, for a replicated tensor every process's slice reads. Backward:
    the sum of the processes' gradients (each holds its slice's part only)."""

    @staticmethod
    def forward(ctx: Any, replicated: Tensor) -> Tensor:
        return replicated.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return all_reduce_sum_(grad.clone())


class Chosen(NamedTuple):
    """This process's entries of a batch's global top k (and AuxK's, when it has some), over
    its slice's columns, with their pre-activations [nnz] in pattern order."""

    pattern: Pattern
    pre: Tensor
    aux_pattern: Pattern | None
    aux_pre: Tensor | None


class ShardedTopKSAE(nn.Module):
    """This process's slice of a TopK SAE of `cfg` (the whole SAE's config) in `world`.

    W_enc [d_in, F/N], b_enc [F/N], W_dec [F/N, d_in]: features `offset` to
    `offset + width` of the whole SAE; b_dec [d_in] replicated.
    """

    local: TopKSAE
    sparsity: ClassVar[str] = TopKSAE.sparsity
    start_settings: ClassVar[tuple[str, ...]] = TopKSAE.start_settings
    step_memory: StepMemory | None = None
    """As `SparseAutoencoder.step_memory`: set, W_enc's gradient is left to be formed after
    W_dec's step (`TrainStep.deferred`; monoscope.train.step.apply_gradients)."""

    def __init__(self, cfg: SAEConfig, world: World) -> None:
        check_shardable(cfg, world.size)
        super().__init__()
        self.cfg, self.world = cfg, world
        self.width = cfg.n_features // world.size
        self.offset = world.rank * self.width
        # The slice is a TopK SAE of `width` features, whose blocked selection it uses. Kept
        # outside the module's children: its parameters are this module's own, listed once.
        local = TopKSAE(replace(cfg, n_features=self.width, training={}))
        self.__dict__["local"] = local
        self.W_enc, self.b_enc = local.W_enc, local.b_enc
        self.W_dec, self.b_dec = local.W_dec, local.b_dec

    @property
    def k(self) -> int:
        assert self.cfg.k is not None
        return self.cfg.k

    def sliced_parameters(self) -> list[nn.Parameter]:
        """The parameters each process holds a different slice of."""
        return [self.W_enc, self.b_enc, self.W_dec]

    # -- the start -----------------------------------------------------------------------
    @torch.no_grad()
    def init_slice(self, seed: int) -> None:
        """This slice of the whole SAE `build_sae(cfg, seed)` initialises (TopKSAE's tied
        start: decoder rows random unit vectors, the encoder their transpose, biases 0), the
        whole never built: the rows before the slice are drawn (on the CPU, the same numbers
        whatever the device) and dropped a block at a time."""
        span = slice(self.offset, self.offset + self.width)
        generator = torch.Generator().manual_seed(seed)
        rows = random_direction_rows(self.cfg.n_features, self.cfg.d_in, generator, span)
        self.W_dec.copy_(rows)
        self.W_enc.copy_(rows.t())
        self.b_enc.zero_()
        self.b_dec.zero_()

    @torch.no_grad()
    def init_b_dec(self, sample: Tensor) -> None:
        """b_dec as `SparseAutoencoder.init_b_dec` sets it from the raw `sample` [n, d_in]
        (the same in every process), process 0's in all: the replicas stay equal to the bit."""
        self.local.init_b_dec(sample)
        if self.world.distributed:
            dist.broadcast(self.b_dec.data, src=0)

    @torch.no_grad()
    def start_from_sample(self, sample: Tensor, start: SampleStart) -> None:
        """TopKSAE's data-dependent start (`TopKFamilySAE.start_from_sample`) of this slice,
        with the whole SAE's fits: the least-squares scales of the whole reconstruction and
        each latent's firing cut at the whole dictionary's rate k / F. Every process must call
        this with the same raw `sample` [n, d_in]."""
        local = self.local
        if start.decoder_init_power > 0:
            local.shape_decoder_directions(sample, start.decoder_init_power)  # row by row
        factor = self.least_squares_scale(sample)
        if factor > 0:
            self.W_enc.mul_(factor)
        if sample.shape[0] < 2 or start.b_enc_init_share == 0:
            return
        cuts = local.firing_cuts(sample[:CUT_SAMPLE], self.k, of_features=self.cfg.n_features)
        self.b_enc.sub_(start.b_enc_init_share * cuts)
        factor = self.least_squares_scale(sample)
        if factor > 0:
            self.W_enc.mul_(factor)
            self.b_enc.mul_(factor)

    @torch.no_grad()
    def least_squares_scale(self, sample: Tensor, rows_per_pass: int = 1024) -> float:
        """`SparseAutoencoder.least_squares_scale` of the whole SAE over the raw `sample`
        [n, d_in] (the same in every process; so is the factor)."""
        scale = self.cfg.input_scale
        return least_squares_factor(
            sample.split(rows_per_pass),
            lambda rows: rows.to(self.W_enc.dtype) * scale,
            lambda rows: self.forward(rows) * scale,
            self.b_dec,
        )

    # -- the step ------------------------------------------------------------------------
    def training_step(
        self, x: Tensor, coefficient: float = AUXK_COEFFICIENT, dead_mask: Tensor | None = None
    ) -> TrainStep:
        """TopKSAE.training_step over the whole batch x [batch, d_in] (the same in every
        process), the dictionary spread over the processes; `dead_mask` [F/N] marks this
        slice's dead latents. `fired` is this slice's [F/N]; the other figures are the whole
        SAE's, alike in every process."""
        x = x.to(self.W_enc.dtype)
        rows, scale = x.shape[0], self.cfg.input_scale
        chosen = self.choose(x, dead_mask)
        shift = _IntoShards.apply(self.b_dec) if self.cfg.subtract_b_dec_in_encoder else None
        defer = None if self.step_memory is None else DeferredGradient(x, scale, shift)
        values = torch.relu(
            sampled_affine(
                x, self.W_enc, self.b_enc, chosen.pattern, chosen.pre, shift, scale, defer=defer
            )
        )
        grad_W_dec = (
            None
            if self.step_memory is None
            else self.step_memory.gradient(GRADIENT_SLOT, self.W_dec)
        )
        sse, residual = self._shard_error(values, chosen.pattern, x, scale, self.b_dec, grad_W_dec)
        fvu = sse / total_variance(x, scale)
        aux = fvu.new_zeros(())
        if chosen.aux_pattern is not None:
            aux = self._aux_loss(x, chosen, shift, defer, residual)
        del residual
        active = values.detach() > 0
        counts = values.new_zeros(self.width)
        counts.index_add_(0, chosen.pattern.col, active.to(values.dtype))
        l0 = all_reduce_sum_(active.sum().to(values.dtype)) / rows
        return TrainStep(
            loss=fvu + coefficient * aux,
            mse=sse.detach() / rows,
            sparsity=aux.detach(),
            l0=l0,
            fired=counts > 0,
            fvu=fvu.detach(),
            deferred=() if defer is None else ((self.W_enc, defer),),
        )

    def _aux_loss(
        self,
        x: Tensor,
        chosen: Chosen,
        shift: Tensor | None,
        defer: DeferredGradient | None,
        residual: Tensor,
    ) -> Tensor:
        """AuxK: how well the chosen dead latents of every slice reconstruct the `residual`
        [batch, d_in], in its normalised MSE (as TopKSAE's)."""
        assert chosen.aux_pattern is not None
        pre = sampled_affine(
            x,
            self.W_enc,
            self.b_enc,
            chosen.aux_pattern,
            chosen.aux_pre,
            shift,
            self.cfg.input_scale,
            defer=defer,
        )
        aux_sse, _ = self._shard_error(torch.relu(pre), chosen.aux_pattern, residual)
        return aux_sse / total_variance(residual)

    def _shard_error(
        self,
        values: Tensor,
        pattern: Pattern,
        target: Tensor,
        scale: float = 1.0,
        offset: Tensor | None = None,
        grad_W_dec_out: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """(Σ ||r||², r detached) for the residual r [batch, d_in] = target * scale - offset -
        the sum over the processes of their decodes of `values` [nnz] at `pattern`.

        The reconstruction's sum is Megatron's all-reduce forward, identity backward: the
        other processes' decodes are constants of this process's graph, so `sparse_error` of
        this decode against the target less theirs gives this slice the sum's whole gradient
        (with the residual as the one [batch, d_in] tensor it keeps for the backward)."""
        if self.world.distributed:
            with torch.no_grad():
                mine = sparse_decode(values.detach(), self.W_dec, pattern)
                rest = all_reduce_sum_(mine.clone()).neg_().add_(target, alpha=scale).add_(mine)
            target, scale = rest, 1.0
        return sparse_error(
            values, self.W_dec, pattern, target, offset, scale, None, grad_W_dec_out
        )

    @torch.no_grad()
    def choose(self, x: Tensor, dead_mask: Tensor | None = None) -> Chosen:
        """This slice's entries of every row's global top k of raw x [batch, d_in] (and of
        AuxK's top k_aux among the dead latents of all slices, given this slice's
        `dead_mask` [F/N])."""
        k_aux = 0
        if dead_mask is not None:
            dead = all_reduce_sum_(dead_mask.to(x.device).sum().view(1))
            k_aux = min(self.cfg.d_in // 2, int(dead))
        sel = self.local.select_latents(x, dead_mask if k_aux else None)
        assert sel.pre is not None  # float32 selections carry their values (check_shardable)
        rows = x.shape[0]
        pattern, pre = self._global_top(sel.pattern.col.view(rows, -1), sel.pre.view(rows, -1))
        if not k_aux:
            return Chosen(pattern, pre, None, None)
        if sel.aux_pattern is None:  # no dead latent in this slice: candidates of none
            columns = torch.zeros(rows, 0, dtype=torch.int64, device=x.device)
            aux_values = x.new_zeros(rows, 0)
        else:
            assert sel.aux_pre is not None
            columns, aux_values = sel.aux_pattern.col.view(rows, -1), sel.aux_pre.view(rows, -1)
        aux_pattern, aux_pre = self._global_top(columns, aux_values, k_aux)
        return Chosen(pattern, pre, aux_pattern, aux_pre)

    def _global_top(
        self, columns: Tensor, values: Tensor, keep: int | None = None
    ) -> tuple[Pattern, Tensor]:
        """This slice's entries of each row's top `keep` (default k) among every process's
        candidates, from this slice's: `columns` (of the slice) and `values` [rows, m <= keep].
        Slices with fewer than `keep` candidates pad theirs with -inf, never chosen (the
        candidates of all slices together are at least `keep`)."""
        keep = self.k if keep is None else keep
        rows = values.shape[0]
        if columns.shape[1] < keep:
            pad = keep - columns.shape[1]
            values = torch.cat([values, values.new_full((rows, pad), float("-inf"))], 1)
            columns = torch.cat([columns, columns.new_full((rows, pad), -self.offset - 1)], 1)
        every_value = self._gather(values)
        every_column = self._gather(columns + self.offset)
        top, position = every_value.topk(keep, dim=1, sorted=False)
        chosen = every_column.gather(1, position) - self.offset
        mine = (chosen >= 0) & (chosen < self.width)
        row = torch.arange(rows, device=values.device).unsqueeze(1).expand_as(chosen)
        return Pattern.from_flat((row * self.width + chosen)[mine], top[mine], rows, self.width)

    def _gather(self, tensor: Tensor) -> Tensor:
        """Every process's `tensor` [rows, m], side by side [rows, N m] (in rank order)."""
        return all_gather_cat(tensor, dim=1)

    # -- inference -----------------------------------------------------------------------
    @torch.no_grad()
    def sparse_codes(self, x: Tensor) -> tuple[Pattern, Tensor]:
        """This slice's part of the whole SAE's codes of raw x [rows, d_in]: a pattern over
        [rows, F/N] and its values [nnz] (ReLU's zeros among them)."""
        x = x.to(self.W_enc.dtype)
        chosen = self.choose(x)
        return chosen.pattern, torch.relu(chosen.pre)

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        """The whole SAE's reconstruction of raw x [rows, d_in], in raw units (every process
        must call it with the same x)."""
        pattern, values = self.sparse_codes(x)
        partial = sparse_decode(values, self.W_dec, pattern)
        return (all_reduce_sum_(partial) + self.b_dec) / self.cfg.input_scale

    # -- the optimizer's part ------------------------------------------------------------
    @torch.no_grad()
    def before_optimizer_step(self) -> None:
        """Drop the gradient along each of this slice's decoder rows (TopKSAE's); b_dec's
        gradient averaged over the processes: each formed the whole gradient, alike up to the
        rounding of its own residual, and the average is alike to the bit, so the replicas of
        b_dec stay equal."""
        self.local.before_optimizer_step()
        if self.world.distributed and self.b_dec.grad is not None:
            all_reduce_sum_(self.b_dec.grad).div_(self.world.size)

    def after_optimizer_step(self) -> None:
        """This slice's decoder rows back to unit norm (TopKSAE's)."""
        self.local.after_optimizer_step()

    @torch.no_grad()
    def gradient_norm(self, sliced_squares: list[Tensor] | None = None) -> Tensor:
        """The whole SAE's gradient norm: the slices' squared norms summed over the processes
        (with `sliced_squares`, squares of gradients not formed yet), b_dec's counted once."""
        squares = list(sliced_squares or [])
        squares += [
            torch.linalg.vector_norm(p.grad) ** 2
            for p in self.sliced_parameters()
            if p.grad is not None
        ]
        sliced = torch.stack(squares).sum() if squares else self.b_dec.new_zeros(())
        total = all_reduce_sum_(sliced.view(1))[0]
        if self.b_dec.grad is not None:
            total = total + torch.linalg.vector_norm(self.b_dec.grad) ** 2
        return total.sqrt()

    @torch.no_grad()
    def clip_gradients(self, max_norm: float) -> Tensor:
        """Scale every gradient by max_norm / (norm + 1e-6) where that is below 1, the norm
        being the whole SAE's (`gradient_norm`), as clip_grad_norm_ does in one process;
        return the norm."""
        norm = self.gradient_norm()
        factor = (max_norm / (norm + _NORM_EPS)).clamp(max=1.0)
        for param in self.parameters():
            if param.grad is not None:
                param.grad.mul_(factor)
        return norm

    # -- whole SAEs in and out -----------------------------------------------------------
    @torch.no_grad()
    def gathered(self) -> TopKSAE | None:
        """The whole SAE on the CPU in process 0 (None in the others): each slice is sent to
        it in turn, so process 0's device holds one slice at a time beyond its own."""
        whole = TopKSAE(self.cfg) if self.world.is_main else None
        for name in SLICED:
            mine = getattr(self, name)
            target = None if whole is None else getattr(whole, name)
            for source in range(self.world.size):
                self._receive_slice(mine, target, source, name)
        if whole is not None:
            whole.b_dec.copy_(self.b_dec)
        return whole

    def _receive_slice(self, mine: Tensor, target: Tensor | None, source: int, name: str) -> None:
        """Process `source`'s slice of `mine` into the whole `target` (in process 0), the
        parameter `name`."""
        rank = self.world.rank
        if target is None:
            if rank == source:
                dist.send(mine.detach().contiguous(), dst=0)
            return
        piece = mine.detach()
        if source != rank:
            piece = torch.empty_like(piece)
            dist.recv(piece, src=source)
        span = slice(source * self.width, (source + 1) * self.width)
        features_of(target, name, span).copy_(piece.cpu())

    def save(self, folder: str | Path) -> None:
        """Write the whole SAE to `folder` as one ordinary SAE folder (process 0 writes it,
        as `SparseAutoencoder.save`; every process must call this)."""
        whole = self.gathered()
        if whole is not None:
            whole.save(folder)


Trainable = SparseAutoencoder | ShardedTopKSAE
"""What the trainer steps: one process's whole SAE, or its slice of a sharded one."""


def shard_of(sae: SparseAutoencoder, world: World) -> ShardedTopKSAE:
    """This process's slice of the whole TopK `sae` (on its device), for `world`."""
    if not isinstance(sae, TopKSAE):
        raise ValueError(f"--shard-features trains topk SAEs only, not {sae.cfg.arch}")
    sharded = ShardedTopKSAE(sae.cfg, world).to(sae.W_enc.device)
    span = slice(sharded.offset, sharded.offset + sharded.width)
    with torch.no_grad():
        for name in SLICED:
            getattr(sharded, name).copy_(features_of(getattr(sae, name), name, span))
        sharded.b_dec.copy_(sae.b_dec)
    return sharded
