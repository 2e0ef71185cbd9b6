"""Least-squares refit of a trained SAE's decoder to its own encoder's codes.

After a short run the decoder lags the encoder: for the codes z the trained encoder gives, the
decoder that reconstructs the training tokens best is the solution of normal equations,

    (ZᵀZ + λ I) W = Zᵀ(X − b_dec) + λ W_trained,      λ = ridge · mean(diag ZᵀZ)

(Z [tokens, n] the codes the decoder's rows multiply, X the normalised tokens), which one more
pass over the same tokens accumulates (ZᵀZ from each token's products of its active codes) and
one n x n solve gives. The ridge pulls latents that fire rarely toward their trained rows. The
codes, and so L0 and the dead latents, are unchanged (no architecture's encoder reads the
decoder); the rows are no longer unit-norm (refitting their norms into the encoder would change
which latents are chosen). On the quality workload (SmolLM2 layer 15, 16 x 576 latents, one
epoch of 200k tokens) the held-out FVU goes from 0.1513 to 0.128 for topk (k 32, lr 5e-3), and
from 0.234 to 0.145 for relu at L0 36.5, whose L1 penalty shrinks the codes the refit's decoder
scales back up (docs/LOG.md, ninth session).

ZᵀZ is n_features² float64 (680 MB at 9,216 latents), factorised in place: `MAX_FEATURES`
bounds it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import Tensor

from monoscope.sae.base import SparseAutoencoder
from monoscope.sae.sparse import Pattern

MAX_FEATURES = 16_384
"""Largest dictionary whose refit is allowed: ZᵀZ, factorised in place, takes 8 n² bytes (2 GiB)."""


def check_size(n_features: int) -> None:
    """ValueError if a refit of this many latents would hold more than `MAX_FEATURES`² floats."""
    if n_features > MAX_FEATURES:
        raise ValueError(
            f"--refit-decoder holds an n_features² matrix: {n_features:,} latents is over "
            f"the {MAX_FEATURES:,} it allows"
        )


def refit_decoder(sae: SparseAutoencoder, batches: Iterable[Tensor], ridge: float) -> int:
    """Replace `sae`'s decoder rows by the ridge (> 0) least-squares fit of raw `batches`
    (each [rows, d_in]) from their `sae.decoder_codes`; return the rows fitted."""
    if ridge <= 0:
        raise ValueError(f"the refit's ridge must be positive, got {ridge}")
    n, d = sae.cfg.n_features, sae.cfg.d_in
    check_size(n)
    gram = torch.zeros(n * n, dtype=torch.float64, device=sae.W_dec.device)
    moments = torch.zeros(n, d, dtype=torch.float64, device=sae.W_dec.device)
    rows = 0
    was_training = sae.training
    sae.eval()  # the codes inference gives (batchtopk: its threshold)
    try:
        with torch.no_grad():
            for batch in batches:
                for x in batch.split(_ROWS):
                    _accumulate(sae, x, gram, moments)
                    rows += x.shape[0]
            if rows == 0:
                raise ValueError("--refit-decoder found no rows to fit")
            gram = gram.view(n, n)
            energy = float(gram.diagonal().mean())
            if energy > 0:  # else no latent fired: nothing to fit
                gram.diagonal().add_(ridge * energy)
                moments.add_(sae.W_dec.double(), alpha=ridge * energy)
                sae.W_dec.copy_(_solve_in_place(gram, moments).to(sae.W_dec.dtype))
    finally:
        sae.train(was_training)
    return rows


def _solve_in_place(gram: Tensor, moments: Tensor) -> Tensor:
    """gram⁻¹ moments for a symmetric positive definite `gram` [n, n], factorised where it
    lies (it is overwritten): the solve holds no second n x n matrix."""
    # Row-major and symmetric, gram is its own transpose in the column-major layout LAPACK
    # works in: read so, the Cholesky factor is written over it rather than into a copy (and
    # the triangular solves, unlike cholesky_solve, read it without copying it).
    lower = gram.mT
    info = torch.empty((), dtype=torch.int32, device=gram.device)
    torch.linalg.cholesky_ex(lower, out=(lower, info))
    if int(info) != 0:
        raise RuntimeError(
            f"the refit's normal equations are not positive definite (LAPACK info {int(info)})"
        )
    half = torch.linalg.solve_triangular(lower, moments, upper=False)
    return torch.linalg.solve_triangular(lower.mT, half, upper=True)


_PRODUCTS = 1 << 22
"""Code products (float64) formed at a time for ZᵀZ."""

_ROWS = 4096
"""Rows encoded at a time (a training batch: topk's selection then works in one column part;
the others' dense codes, [rows, n_features], are 151 MB at 9,216 latents)."""


def _accumulate(sae: SparseAutoencoder, x: Tensor, gram: Tensor, moments: Tensor) -> None:
    """Add raw rows x [r, d_in]'s share to ZᵀZ (flat [n * n], float64) and Zᵀ(X − b_dec)."""
    pattern, values = sae.sparse_codes(x)  # CSR: each row's codes
    for index, codes in _rows_by_count(pattern, values):
        # Each row's c x c products, rows at a time so that they stay ~32 MB.
        step = max(1, _PRODUCTS // index.shape[1] ** 2)
        for start in range(0, index.shape[0], step):
            v, i = codes[start : start + step].double(), index[start : start + step]
            products = v.unsqueeze(2) * v.unsqueeze(1)  # [r, c, c]
            flat = (i.unsqueeze(2) * pattern.n_cols + i.unsqueeze(1)).flatten()
            gram.index_add_(0, flat, products.flatten())
    target = sae.normalise(x) - sae.b_dec  # [r, d]
    moments.add_(pattern.transposed_product(values, target))  # float32 summed into float64


def _rows_by_count(pattern: Pattern, values: Tensor) -> Iterator[tuple[Tensor, Tensor]]:
    """(latents, codes), both [m, c], of the m rows with c codes, for each count c > 0: rows
    of a relu or batchtopk SAE hold from one code to hundreds, and padding every row to the
    widest would form (widest / mean)² times the products (~50x for relu at L0 37)."""
    counts = pattern.crow.diff()
    for count in counts.unique().tolist():
        if count == 0:
            continue
        rows = (counts == count).nonzero().flatten()
        entries = pattern.crow[rows].unsqueeze(1) + torch.arange(count, device=rows.device)
        yield pattern.col[entries], values[entries]
