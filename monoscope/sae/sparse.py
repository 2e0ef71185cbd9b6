"""Sparse training kernels for TopK-style SAEs: gradients that never touch [batch, n_features].

A TopK code has k nonzeros per token out of n_features, so the dense encoder matmul is the only
O(batch * n_features * d) cost it needs (forward only, to choose the active latents). Everything
else works on the nnz = batch * k selected entries, held as a `Pattern` (CSR indices):

- `sampled_affine(x, W, b, pattern)`: the entries (x @ W + b)[row, col] at the pattern, with a
  backward that forms grad_W, grad_b and grad_x from those entries only;
- `sparse_decode(values, W_dec, pattern)`: x_hat = Σ values · W_dec[col] per row, with
  grad_values = <grad_out[row], W_dec[col]> and grad_W_dec accumulated into the touched rows.

Both are torch CSR products (sparse @ dense, sampled_addmm; cuSPARSE on CUDA). On 2 CPU cores at
batch 4096, d 576, 9216 latents, k 32 each takes a few tens of ms, about 10x less than gather +
index_add_ with [nnz, d] temporaries; a whole TopK step (forward, backward, Adam) costs ~1.7x the
dense encoder matmul alone (0.52 s vs 0.30 s), against ~6.5x for plain dense autograd.
"""

from __future__ import annotations

import warnings
from functools import cached_property
from typing import Any

import torch
from torch import Tensor


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
    def from_flat_indices(cls, flat: Tensor, n_rows: int, n_cols: int) -> Pattern:
        """Entries given as flat indices row * n_cols + col, any order, no duplicates."""
        flat = flat.sort().values
        row = flat // n_cols
        crow = torch.zeros(n_rows + 1, dtype=torch.int64, device=flat.device)
        crow[1:] = torch.bincount(row, minlength=n_rows).cumsum(0)
        return cls(crow, flat % n_cols, n_rows, n_cols)

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
        order = torch.argsort(self.col, stable=True)  # stable: rows stay ascending per column
        crow_t = torch.zeros(self.n_cols + 1, dtype=torch.int64, device=self.col.device)
        crow_t[1:] = torch.bincount(self.col, minlength=self.n_cols).cumsum(0)
        return order, crow_t, self.row[order]

    def transposed_matrix(self, values: Tensor) -> Tensor:
        """The same entries as a CSR matrix of the transpose, [n_cols, n_rows]."""
        order, crow_t, row_t = self._transpose
        return _csr(crow_t, row_t, values[order], (self.n_cols, self.n_rows))

    def sampled_matmul(self, a: Tensor, b: Tensor) -> Tensor:
        """(a @ b)[row, col] at the pattern [nnz], without forming a @ b."""
        zeros = torch.zeros(self.nnz, dtype=a.dtype, device=a.device)
        return torch.sparse.sampled_addmm(self.matrix(zeros), a, b, beta=0.0).values()

    def dense(self, values: Tensor) -> Tensor:
        """The dense [n_rows, n_cols] matrix (for tests and small inputs only)."""
        return self.matrix(values).to_dense()


def _csr(crow: Tensor, col: Tensor, values: Tensor, size: tuple[int, int]) -> Tensor:
    with warnings.catch_warnings():
        # torch warns once per process that CSR support is "beta"; the ops used here
        # (CSR @ dense, sampled_addmm) are covered by the tests against dense references.
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta state")
        return torch.sparse_csr_tensor(crow, col, values, size=size, check_invariants=False)


class _SampledAffine(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, x: Tensor, W: Tensor, b: Tensor, pattern: Pattern, dense: Tensor | None
    ) -> Tensor:
        ctx.save_for_backward(x, W)
        ctx.pattern = pattern
        if dense is not None:
            return dense[pattern.row, pattern.col]
        return pattern.sampled_matmul(x, W) + b[pattern.col]

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, W = ctx.saved_tensors
        pattern: Pattern = ctx.pattern
        grad_x = grad_W = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = pattern.matrix(grad) @ W.t()  # [rows, d]
        if ctx.needs_input_grad[1]:
            grad_W = (pattern.transposed_matrix(grad) @ x).t()  # [d, cols]
        if ctx.needs_input_grad[2]:
            grad_b = torch.zeros(pattern.n_cols, dtype=grad.dtype, device=grad.device)
            grad_b.index_add_(0, pattern.col, grad)
        return grad_x, grad_W, grad_b, None, None


class _SparseDecode(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, values: Tensor, W_dec: Tensor, pattern: Pattern) -> Tensor:
        ctx.save_for_backward(values, W_dec)
        ctx.pattern = pattern
        return pattern.matrix(values) @ W_dec

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        values, W_dec = ctx.saved_tensors
        pattern: Pattern = ctx.pattern
        grad_values = grad_W_dec = None
        if ctx.needs_input_grad[0]:
            grad_values = pattern.sampled_matmul(grad_out, W_dec.t())  # [nnz]
        if ctx.needs_input_grad[1]:
            grad_W_dec = pattern.transposed_matrix(values) @ grad_out  # [n_features, d]
        return grad_values, grad_W_dec, None


def sampled_affine(
    x: Tensor, W: Tensor, b: Tensor, pattern: Pattern, dense: Tensor | None = None
) -> Tensor:
    """(x @ W + b)[row, col] at the pattern's entries [nnz]; x [rows, d], W [d, cols], b [cols].

    Forward and backward cost O(nnz * d): the gradient w.r.t. W is a CSR product over the
    selected (entry, grad) pairs, never a dense [rows, cols] matrix. `dense`, if given, is
    x @ W + b already computed without grad (to choose the pattern): its entries are gathered
    instead of recomputed, so they equal the dense pre-activations bit for bit.
    """
    return _SampledAffine.apply(x, W, b, pattern, dense)


def sparse_decode(values: Tensor, W_dec: Tensor, pattern: Pattern) -> Tensor:
    """Σ_n values[n] · W_dec[col[n]] per row: [rows, d] from values [nnz], W_dec [cols, d]."""
    return _SparseDecode.apply(values, W_dec, pattern)


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
