"""Training kernels for TopK-style SAEs: gradients that never touch [batch, n_features].

A TopK code has k nonzeros per token out of n_features, so the dense encoder matmul is the only
O(batch * n_features * d) cost it needs (forward only, to choose the active latents). It runs
a block of rows (and of columns) at a time, each block searched while it is in cache
(`top_groups`: a max-pool over groups of columns, then two small topk, ~4x faster than a topk
over every entry). Everything else works on the nnz = batch * k selected entries, held as a
`Pattern` (CSR indices):

- `sampled_affine(x, W, b, pattern, values, shift, scale)`: the entries of
  (x * scale - shift) @ W + b at the pattern (given, when the selection computed them), with a
  backward that forms grad_W, grad_b and grad_shift from those entries only;
- `sparse_error(values, W_dec, pattern, target, offset, scale)`: the decode x_hat and
  Σ ||target * scale - offset - x_hat||^2, holding the residual as the one [batch, d] tensor,
  with grad_values = <residual[row], W_dec[col]> and grad_W_dec over the touched rows.

The sums over entries are EmbeddingBag weighted sums (2-3x faster on the CPU than CSR @ dense,
which zero-fills and copies its output); grad_values is a CSR sampled product (cuSPARSE on
CUDA).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from functools import cached_property
from typing import Any, NamedTuple

import torch
from torch import Tensor

from monoscope.sae.blocks import block_rows


class Pattern:
    """Which entries of a [n_rows, n_cols] code are selected, in CSR order.

    `crow` [n_rows + 1] and `col` [nnz] (int64; columns ascending within a row) as in a CSR
    matrix; entry n of a values tensor [nnz] sits at (row[n], col[n]).
    """

    def __init__(self, crow: Tensor, col: Tensor, n_rows: int, n_cols: int) -> None:
        self.crow, self.col = crow, col
        self.n_rows, self.n_cols = n_rows, n_cols

    @classmethod
    def from_row_indices(cls, indices: Tensor, n_cols: int) -> Pattern:
        """k entries per row: `indices` [n_rows, k], any order within a row."""
        n_rows, k = indices.shape
        crow = torch.arange(0, n_rows * k + 1, k, device=indices.device)
        return cls(crow, indices.sort(dim=-1).values.flatten(), n_rows, n_cols)

    @classmethod
    def from_rows(cls, indices: Tensor, values: Tensor, n_cols: int) -> tuple[Pattern, Tensor]:
        """k entries per row with their values, both [n_rows, k] in any order within a row:
        the pattern and the values [nnz] in its (CSR) order."""
        n_rows, k = indices.shape
        col, order = indices.sort(dim=-1)
        crow = torch.arange(0, n_rows * k + 1, k, device=indices.device)
        return cls(crow, col.flatten(), n_rows, n_cols), values.gather(1, order).flatten()

    @classmethod
    def from_flat(
        cls, flat: Tensor, values: Tensor, n_rows: int, n_cols: int
    ) -> tuple[Pattern, Tensor]:
        """Entries given as flat indices row * n_cols + col with their values [nnz], any order,
        no duplicates: the pattern and the values in its (CSR) order."""
        flat, order = flat.sort()
        return cls.from_flat_indices(flat, n_rows, n_cols, presorted=True), values[order]

    @classmethod
    def from_flat_indices(
        cls, flat: Tensor, n_rows: int, n_cols: int, presorted: bool = False
    ) -> Pattern:
        """Entries given as flat indices row * n_cols + col, any order, no duplicates."""
        if not presorted:
            flat = flat.sort().values
        row = flat // n_cols
        crow = torch.zeros(n_rows + 1, dtype=torch.int64, device=flat.device)
        crow[1:] = torch.bincount(row, minlength=n_rows).cumsum(0)
        return cls(crow, flat % n_cols, n_rows, n_cols)

    def release_cache(self) -> None:
        """Forget the derived indices (`row`, the transpose); they are recomputed on demand."""
        for name in ("row", "_transpose"):
            self.__dict__.pop(name, None)

    @property
    def nnz(self) -> int:
        return self.col.numel()

    @cached_property
    def row(self) -> Tensor:
        """Row of every entry [nnz]."""
        counts = self.crow.diff()
        return torch.repeat_interleave(torch.arange(self.n_rows, device=counts.device), counts)

    def matrix(self, values: Tensor) -> Tensor:
        """The sparse CSR matrix [n_rows, n_cols] with `values` [nnz] at the pattern."""
        return _csr(self.crow, self.col, values, (self.n_rows, self.n_cols))

    @cached_property
    def _transpose(self) -> tuple[Tensor, Tensor, Tensor]:
        """(entry order, crow, col) of the transpose's CSR; cached: both backwards use it."""
        # Stable: rows stay ascending within a column. int32 keys sort faster than int64.
        keys = self.col.int() if self.n_cols < 2**31 else self.col
        order = torch.argsort(keys, stable=True)
        crow_t = torch.zeros(self.n_cols + 1, dtype=torch.int64, device=self.col.device)
        crow_t[1:] = torch.bincount(self.col, minlength=self.n_cols).cumsum(0)
        return order, crow_t, self.row[order]

    def product(self, values: Tensor, dense: Tensor) -> Tensor:
        """matrix(values) @ dense [n_rows, d] for dense [n_cols, d]: per row, the sum of its
        entries times the rows of `dense` they select."""
        return _bags(self.col, self.crow, values, dense)

    def subtract_product(self, values: Tensor, dense: Tensor, out: Tensor) -> Tensor:
        """out -= matrix(values) @ dense, in place, a block of rows at a time (no [n_rows, d]
        temporary)."""
        step = block_rows(dense.shape[1] * dense.element_size())  # per [block, d] temporary
        starts = [*range(0, self.n_rows, step), self.n_rows]
        bounds = self.crow[starts].tolist()  # one host sync for all blocks
        for start, stop, lo, hi in zip(starts, starts[1:], bounds, bounds[1:], strict=False):
            offsets = self.crow[start : stop + 1] - lo
            out[start:stop].sub_(_bags(self.col[lo:hi], offsets, values[lo:hi], dense))
        return out

    def transposed_product(
        self, values: Tensor, dense: Tensor, out: Tensor | None = None, accumulate: bool = False
    ) -> Tensor:
        """matrix(values)^T @ dense [n_cols, d] for dense [n_rows, d]; written into `out`
        [n_cols, d] if given, or with `accumulate` added to it (a block of columns at a
        time)."""
        if out is None:
            if accumulate:
                raise ValueError("accumulate needs an `out` to add to")
            order, crow_t, row_t = self._transpose
            return _bags(row_t, crow_t, values[order], dense)
        for start, stop, block in self._transposed_blocks(values, dense):
            if accumulate:
                out[start:stop] += block
            else:
                out[start:stop] = block
        return out

    def _transposed_blocks(
        self, values: Tensor, dense: Tensor
    ) -> Iterator[tuple[int, int, Tensor]]:
        """(first column, end column, the block [end - first, d] of matrix(values)^T @ dense)
        for blocks of columns small enough to stay in cache."""
        order, crow_t, row_t = self._transpose
        values = values[order]
        columns = block_rows(dense.shape[1] * dense.element_size())  # per [block, d] product
        starts = [*range(0, self.n_cols, columns), self.n_cols]
        bounds = crow_t[starts].tolist()  # one host sync for all blocks
        for start, stop, lo, hi in zip(starts, starts[1:], bounds, bounds[1:], strict=False):
            offsets = crow_t[start : stop + 1] - lo
            yield start, stop, _bags(row_t[lo:hi], offsets, values[lo:hi], dense)

    def transposed_product_t(
        self,
        values: Tensor,
        dense: Tensor,
        minus_outer: tuple[Tensor, Tensor] | None = None,
        out: Tensor | None = None,
        accumulate: bool = False,
    ) -> Tensor:
        """(matrix(values)^T @ dense)^T, row-major [d, n_cols], for dense [n_rows, d]; minus
        the outer product u ⊗ v [d, n_cols] if `minus_outer` is (u, v); written into `out`
        (row-major [d, n_cols]) if given, or with `accumulate` added to it (each block formed
        whole first: the sums are those of adding a product formed without `accumulate`).

        The gradient of a [d, n_cols] row-major parameter must be row-major too, or autograd
        copies it whole into that layout. So the product runs over blocks of columns, each
        transposed into the result while it is in cache: no second [n_cols, d] tensor.
        """
        if out is None:
            if accumulate:
                raise ValueError("accumulate needs an `out` to add to")
            out = dense.new_empty(dense.shape[1], self.n_cols)
        for start, stop, block in self._transposed_blocks(values, dense):
            part = block.t()  # the block is this loop's own: the outer product goes into it
            if minus_outer is not None:
                u, v = minus_outer
                part.addr_(u, v[start:stop], alpha=-1.0)
            target = out[:, start:stop]
            if accumulate:
                target.add_(part)
            else:
                target.copy_(part)
        return out

    def sampled_matmul(self, a: Tensor, b: Tensor) -> Tensor:
        """(a @ b)[row, col] at the pattern [nnz], without forming a @ b."""
        zeros = torch.zeros(self.nnz, dtype=a.dtype, device=a.device)
        return torch.sparse.sampled_addmm(self.matrix(zeros), a, b, beta=0.0).values()

    def dense(self, values: Tensor) -> Tensor:
        """The dense [n_rows, n_cols] matrix (for tests and small inputs only)."""
        return self.matrix(values).to_dense()


def _bags(index: Tensor, offsets: Tensor, weights: Tensor, table: Tensor) -> Tensor:
    """Row i of the result: Σ weights[n] * table[index[n]] over n in offsets[i]:offsets[i + 1].

    EmbeddingBag's weighted sum: on the CPU 2-3x faster than the same CSR @ dense product,
    which zero-fills and copies its output besides."""
    return torch.nn.functional.embedding_bag(
        index, table, offsets, mode="sum", per_sample_weights=weights, include_last_offset=True
    )


def _csr(crow: Tensor, col: Tensor, values: Tensor, size: tuple[int, int]) -> Tensor:
    with warnings.catch_warnings():
        # torch warns once per process that CSR support is "beta"; the ops used here
        # (sampled_addmm, to_dense) are covered by the tests against dense references.
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta state")
        return torch.sparse_csr_tensor(crow, col, values, size=size, check_invariants=False)


class DeferredGradient:
    """The gradient of a row-major W [d, cols] through `sampled_affine` (one or more calls on
    the same x, scale and shift), left by the backward to be formed later: Σ over the calls'
    entries of grad[n] * (x[row n] * scale - shift) into column col[n].

    A training loop that forms it after the other parameters' step (and after dropping their
    gradients) holds one weight gradient at a time instead of two, and `norm_bound` tells it,
    in O(rows * d + nnz) and without forming it, whether gradient clipping could scale it.
    Holds the calls' patterns, their gradients [nnz] and the caller's x (which must not
    change before then) until formed.
    """

    ROUNDING_MARGIN = 1e-3
    """Relative slack added to `norm_bound` for the float rounding of its sums."""

    def __init__(self, x: Tensor, scale: float, shift: Tensor | None) -> None:
        # shift is a parameter (b_dec) that may step before this is formed: its value now.
        self.x, self.scale = x, scale
        self.shift = None if shift is None else shift.detach().clone()
        self._terms: list[tuple[Pattern, Tensor, Tensor | None]] = []

    def add(self, pattern: Pattern, grad: Tensor, grad_b: Tensor | None) -> None:
        """A call's entries' gradients [nnz] (pattern order) and, with a shift, their column
        sums [cols]."""
        self._terms.append((pattern, grad, grad_b))

    def __len__(self) -> int:
        """How many calls' terms it holds (0: none reached the backward)."""
        return len(self._terms)

    @torch.no_grad()
    def norm_bound(self) -> Tensor:
        """A scalar at least the gradient's Frobenius norm: column j is a sum over its entries
        of grad[n] * (x[row n] * scale - shift), so its norm is at most Σ |grad[n]| times
        those rows' norms (the triangle inequality)."""
        if not self._terms:
            return self.x.new_zeros(())
        norms = self._input_row_norms()
        column_bounds = norms.new_zeros(self._terms[0][0].n_cols)
        for pattern, grad, _ in self._terms:
            column_bounds.index_add_(0, pattern.col, grad.abs() * norms[pattern.row])
        return torch.linalg.vector_norm(column_bounds) * (1 + self.ROUNDING_MARGIN)

    @torch.no_grad()
    def form(self, out: Tensor | None = None) -> Tensor:
        """The gradient [d, cols] (row-major; into `out` if given), as the backward would have
        formed it (the same sums, bit for bit); the terms are then dropped."""
        for n, (pattern, grad, grad_b) in enumerate(self._terms):
            entries = grad * self.scale if self.scale != 1.0 else grad
            outer = None
            if self.shift is not None:
                assert grad_b is not None  # with a shift, `add` was given the column sums
                outer = (self.shift, grad_b)
            out = pattern.transposed_product_t(entries, self.x, outer, out, accumulate=n > 0)
            pattern.release_cache()
        if out is None:
            raise ValueError("no gradient to form: no backward reached the deferred terms")
        self._terms, self.x, self.shift = [], self.x.new_empty(0), None
        return out

    def _input_row_norms(self) -> Tensor:
        """||x[r] * scale - shift|| per row [rows], a cache-sized block of rows at a time."""
        x, rows = self.x, block_rows(self.x.shape[1] * self.x.element_size())
        norms = x.new_empty(x.shape[0])
        for start in range(0, x.shape[0], rows):
            block = x[start : start + rows] * self.scale
            if self.shift is not None:
                block -= self.shift
            torch.linalg.vector_norm(block, dim=1, out=norms[start : start + rows])
        return norms


class _SampledAffine(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        W: Tensor,
        b: Tensor,
        shift: Tensor | None,
        pattern: Pattern,
        values: Tensor | None,
        scale: float,
        defer: DeferredGradient | None,
    ) -> Tensor:
        ctx.save_for_backward(x, W, shift)
        ctx.pattern, ctx.scale = pattern, scale
        ctx.defer = defer if defer is not None and W.stride(1) == 1 else None
        if values is not None:
            return values.clone()  # an output, not an alias of the caller's tensor
        out = pattern.sampled_matmul(x, W)
        if scale != 1.0:
            out.mul_(scale)
        bias = b if shift is None else b - shift @ W
        return out.add_(bias[pattern.col])

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, W, shift = ctx.saved_tensors
        pattern: Pattern = ctx.pattern
        scale: float = ctx.scale
        need_x, need_W, need_b, need_shift = ctx.needs_input_grad[:4]
        grad_x = grad_W = grad_b = grad_shift = None
        if need_b or need_shift or (need_W and shift is not None):
            grad_b = torch.zeros(pattern.n_cols, dtype=grad.dtype, device=grad.device)
            grad_b.index_add_(0, pattern.col, grad)
        if need_x:
            grad_x = pattern.product(grad * scale, W.t())  # [rows, d]
        if need_W and W.stride(1) == 1:  # row-major [d, cols], laid out as its gradient must be
            # Formed as DeferredGradient forms it, now or (given one) once the caller asks.
            defer = DeferredGradient(x, scale, shift) if ctx.defer is None else ctx.defer
            defer.add(pattern, grad, grad_b)
            if ctx.defer is None:
                grad_W = defer.form()
        elif need_W:
            # The rows the pre-activations read are x * scale - shift: x^T @ the entries,
            # scaled, minus shift ⊗ their column sums (no [rows, d] copy of the input).
            grad_W = pattern.transposed_product(grad * scale if scale != 1.0 else grad, x)
            if shift is not None:
                assert grad_b is not None  # formed above whenever W's gradient meets a shift
                grad_W.addr_(grad_b, shift, alpha=-1.0)
            grad_W = grad_W.t()
        if need_shift:
            grad_shift = -(W @ grad_b)  # d/dshift = -Σ_rows grad_input
        # The encoder is the first step of the graph, so this is the last backward to need
        # the pattern's derived indices: drop them rather than keep them with the graph
        # (they are recomputed if a backward runs again), unless W's gradient still needs them.
        if ctx.defer is None:
            pattern.release_cache()
        ctx.defer = None  # handed over: the graph keeps no reference to it
        grad_b = grad_b if need_b else None
        return grad_x, grad_W, grad_b, grad_shift, None, None, None, None


class _SparseDecode(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, values: Tensor, W_dec: Tensor, pattern: Pattern) -> Tensor:
        ctx.save_for_backward(values, W_dec)
        ctx.pattern = pattern
        return pattern.product(values, W_dec)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        values, W_dec = ctx.saved_tensors
        pattern: Pattern = ctx.pattern
        grad_values = grad_W_dec = None
        if ctx.needs_input_grad[0]:
            grad_values = pattern.sampled_matmul(grad_out, W_dec.t())  # [nnz]
        if ctx.needs_input_grad[1]:
            grad_W_dec = pattern.transposed_product(values, grad_out)  # [cols, d]
        return grad_values, grad_W_dec, None


class _SparseError(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        values: Tensor,
        W_dec: Tensor,
        offset: Tensor | None,
        target: Tensor,
        pattern: Pattern,
        scale: float,
        out: Tensor | None,
        grad_W_dec_out: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        # residual = target * scale - offset - decoded: one [rows, d] tensor in all.
        if out is None:
            residual = pattern.product(values, W_dec).neg_().add_(target, alpha=scale)
        else:
            residual = torch.mul(target, scale, out=out)
            pattern.subtract_product(values, W_dec, residual)
        if offset is not None:
            residual.sub_(offset)
        flat = residual.view(-1)
        ctx.save_for_backward(values, W_dec, residual)
        ctx.pattern, ctx.scale, ctx.grad_W_dec_out = pattern, scale, grad_W_dec_out
        ctx.mark_non_differentiable(residual)
        # The residual gets no gradient: without this, autograd would pass the backward a
        # [rows, d] tensor of zeros for it, allocated and filled every step.
        ctx.set_materialize_grads(False)
        return torch.dot(flat, flat), residual

    @staticmethod
    def backward(
        ctx: Any, grad_total: Tensor | None, _: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        if grad_total is None:
            return (None,) * 8
        values, W_dec, residual = ctx.saved_tensors
        pattern: Pattern = ctx.pattern
        # d total / d decoded = -2 residual; the factor goes on the small operands, so no
        # [rows, d] gradient tensor is formed.
        factor = -2.0 * grad_total
        grad_values = grad_W_dec = grad_offset = grad_target = None
        if ctx.needs_input_grad[0]:
            grad_values = pattern.sampled_matmul(residual, W_dec.t()).mul_(factor)  # [nnz]
        if ctx.needs_input_grad[1]:
            grad_W_dec = pattern.transposed_product(values * factor, residual, ctx.grad_W_dec_out)
        ctx.grad_W_dec_out = None  # handed over, as in _SampledAffine
        if ctx.needs_input_grad[2]:
            grad_offset = residual.sum(0).mul_(factor)
        if ctx.needs_input_grad[3]:
            grad_target = residual * (-factor * ctx.scale)
        return grad_values, grad_W_dec, grad_offset, grad_target, None, None, None, None


def sampled_affine(
    x: Tensor,
    W: Tensor,
    b: Tensor,
    pattern: Pattern,
    values: Tensor | None = None,
    shift: Tensor | None = None,
    scale: float = 1.0,
    defer: DeferredGradient | None = None,
) -> Tensor:
    """((x * scale - shift) @ W + b)[row, col] at the pattern's entries [nnz]; x [rows, d],
    W [d, cols], b [cols], shift [d] (optional).

    Forward and backward cost O(nnz * d): the gradient w.r.t. W is a sum over the selected
    (entry, grad) pairs, never a dense [rows, cols] matrix, and shift's is -W @ grad_b, without
    a [rows, d] gradient (or copy) of the input.

    `values`, if given, are those entries already computed without grad (while choosing the
    pattern): they are returned as they are, so they equal the selection's pre-activations bit
    for bit.

    With `defer` (made for this x, scale and shift) and W row-major, the backward does not
    form W's gradient but leaves its terms to `defer` (see step_memory.py); W gets none.
    """
    return _SampledAffine.apply(x, W, b, shift, pattern, values, scale, defer)


def sparse_decode(values: Tensor, W_dec: Tensor, pattern: Pattern) -> Tensor:
    """Σ_n values[n] · W_dec[col[n]] per row: [rows, d] from values [nnz], W_dec [cols, d]."""
    return _SparseDecode.apply(values, W_dec, pattern)


def sparse_error(
    values: Tensor,
    W_dec: Tensor,
    pattern: Pattern,
    target: Tensor,
    offset: Tensor | None = None,
    scale: float = 1.0,
    out: Tensor | None = None,
    grad_W_dec_out: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """(Σ_rows ||r||^2, r detached) for the residual r = target * scale - offset -
    sparse_decode(values, W_dec, pattern); target [rows, d], offset [d] (optional).

    The decode and the squared error in one step holding one [rows, d] tensor (the residual,
    kept for the backward and returned for reuse, e.g. as AuxK's target), where autograd would
    hold several; `out`, if given, is where the residual is written, and `grad_W_dec_out`
    where the backward writes W_dec's gradient.
    """
    return _SparseError.apply(values, W_dec, offset, target, pattern, scale, out, grad_W_dec_out)


def topk_rows(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """(values, indices) [rows, k] of the k largest entries of each row of `scores` [rows, n],
    in no particular order: the values of `scores.topk(k, dim=-1)`, faster for k << n (see
    `topk_blocks`)."""
    if not scores.is_contiguous():
        return scores.topk(k, dim=-1, sorted=False)
    return topk_blocks(scores.unsqueeze(0), k)


def topk_blocks(blocks: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """`topk_rows` of the matrix [rows, nb * w] held as column blocks `blocks` [nb, rows, w]
    (block b holds columns b * w to b * w + w - 1; each block's rows contiguous)."""
    return top_groups(blocks, k).finish(k)


class TopGroups(NamedTuple):
    """The k groups of largest maximum of each row, which hold the row's top k entries.

    A row's columns are cut into groups of s consecutive columns. The row's top k entries all
    lie in its k groups of largest maximum: an entry outside them is at most the k-th largest
    group maximum, and those k groups hold k entries at least that large. So topk runs on the
    group maxima (a max-pool) and then on the k * s members only, gathered as k runs of s
    values: O(n) vectorised work plus two small topk, against a topk over every entry (~4x
    slower at k 32 of 9216). Groups of parts of the columns merge (`merge_groups`): the
    row's top k groups are among the parts' top k groups.
    """

    maxima: Tensor
    """[rows, k] the groups' maxima."""
    first: Tensor
    """[rows, k] the column of each group's first member."""
    members: Tensor
    """[rows, k, s] the members' values, in column order."""

    def finish(self, k: int) -> tuple[Tensor, Tensor]:
        """(values, columns) [rows, k] of each row's top k entries."""
        rows, groups, size = self.members.shape
        if size == 1 and groups == k:
            return self.maxima, self.first
        values, position = self.members.view(rows, -1).topk(k, dim=-1, sorted=False)
        return values, self.first.gather(1, position // size) + position % size


def top_groups(
    blocks: Tensor, k: int, column_offset: int = 0, row_width: int | None = None
) -> TopGroups:
    """`TopGroups` of the matrix held as column blocks `blocks` [nb, rows, w] (see
    `topk_blocks`), its first column being `column_offset`; `row_width`: the width of the
    whole rows when `blocks` is a part of them (it sets the group size)."""
    nb, rows, w = blocks.shape
    s = _group_size(nb * w, w, k, row_width or nb * w)
    if s == 0 or blocks.stride(2) != 1 or blocks.stride(1) != w or blocks.stride(0) % s:
        whole = blocks[0] if nb == 1 else blocks.permute(1, 0, 2).reshape(rows, nb * w)
        values, columns = whole.topk(k, dim=-1, sorted=False)
        return TopGroups(values, columns + column_offset, values.unsqueeze(-1))
    per_block, device = w // s, blocks.device
    pool = torch.nn.functional.max_pool1d
    if blocks.stride(0) == rows * w:  # one call for all blocks
        pooled = pool(blocks.view(nb * rows, 1, w), s, s).view(nb, rows, per_block)
    else:
        pooled = torch.stack([pool(block.unsqueeze(1), s, s).squeeze(1) for block in blocks])
    group_max = pooled.permute(1, 0, 2).reshape(rows, nb * per_block)  # [rows, groups]
    del pooled
    maxima, group = group_max.topk(k, dim=-1, sorted=False)  # [rows, k]
    del group_max
    # Group g is block g // per_block, columns (g % per_block) * s ...: one run of s values,
    # line `start[g] + row * per_block` of the blocks' memory cut in runs of s.
    g = torch.arange(nb * per_block, device=device)
    start = (g // per_block) * (blocks.stride(0) // s) + g % per_block
    row = torch.arange(0, rows * per_block, per_block, device=device)[:, None]
    line = start[group] + row  # [rows, k]
    lines = blocks.as_strided(((nb - 1) * blocks.stride(0) // s + rows * per_block, s), (s, 1))
    members = lines.index_select(0, line.view(-1)).view(rows, k, s)
    return TopGroups(maxima, group * s + column_offset, members)


def merge_groups(parts: list[TopGroups], k: int) -> TopGroups:
    """The `TopGroups` of whole rows from those of parts of their columns (same group size)."""
    if len(parts) == 1:
        return parts[0]
    maxima, position = torch.cat([p.maxima for p in parts], 1).topk(k, dim=-1, sorted=False)
    first = torch.cat([p.first for p in parts], 1).gather(1, position)
    members = torch.cat([p.members for p in parts], 1)
    size = members.shape[2]
    members = members.gather(1, position.unsqueeze(-1).expand(-1, -1, size))
    return TopGroups(maxima, first, members)


def _group_size(n: int, w: int, k: int, row_width: int) -> int:
    """Group size s for `top_groups` of n columns in blocks of w, parts of rows of
    `row_width`: a divisor of w near sqrt(row_width / k) (two topk of about that many), with
    k * s at most n / 4; 0 (plain topk) when none qualifies or k is not small next to n."""
    if n < 32 * k:
        return 0
    target = math.sqrt(row_width / k)
    fits = [s for s in range(2, int(2 * target) + 1) if w % s == 0 and 4 * k * s <= n]
    return min(fits, key=lambda s: abs(math.log(s / target)), default=0)


def batch_topk_indices(scores: Tensor, n: int) -> Tensor:
    """Flat indices of the n largest entries of `scores` [rows, cols] (any order).

    A flat topk over rows * cols entries is ~5x slower than a row-wise one, so take each row's
    top m candidates first (m = 4 n / rows) and the global top n among those; exact unless
    some row's m-th candidate still beats the global n-th value, when the flat topk runs instead.
    """
    rows, cols = scores.shape
    m = min(cols, max(1, 4 * -(-n // rows)))
    if m < cols and n <= rows * m:
        cand_vals, cand_idx = scores.topk(m, dim=-1, sorted=True)
        top_vals, top = cand_vals.flatten().topk(n, sorted=False)
        if not bool((cand_vals[:, -1] > top_vals.min()).any()):
            row = top // m
            return row * cols + cand_idx.flatten()[top]
    return scores.flatten().topk(n, sorted=False).indices
