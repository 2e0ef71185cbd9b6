"""Least-squares refit of a trained SAE's decoder to its own encoder's codes.

After a short run the decoder lags the encoder: for the codes z the trained encoder gives, the
decoder that reconstructs the training tokens best is the solution of normal equations,

    (ZᵀZ + λ I) W = Zᵀ(X − b_dec) + λ W_trained,      λ = ridge · mean(diag ZᵀZ)

(Z [tokens, n] the codes the decoder's rows multiply, X the normalised tokens). The ridge pulls
latents that fire rarely toward their trained rows. The codes, and so L0 and the dead latents,
are unchanged (no architecture's encoder reads the decoder); the rows are no longer unit-norm
(refitting their norms into the encoder would change which latents are chosen). It lowers the
held-out FVU of short runs, relu's most, whose L1 penalty shrinks the codes the refit's
decoder scales back up (docs/LOG.md).

The system is solved by conjugate gradients, each of W's d columns its own system sharing ZᵀZ,
preconditioned by ZᵀZ's diagonal and started at the trained rows. One pass over the tokens
encodes them, keeping their sparse codes (6 bytes a code: 38 MB for 200k tokens at L0 32), and
forms the first residual Zᵀ(X − b_dec − Z W_trained) (the ridge terms cancel there); each
iteration then multiplies by ZᵀZ as Zᵀ(Z P), from the kept codes. No n x n matrix is formed
(ZᵀZ in float64 is 680 MB at 9,216 latents, 5.3x the weights and Adam state): the refit holds
the codes and three [n, d] matrices. Each iteration lowers the training loss (squared error +
ridge) by Σ_j α_j rᵀz_j exactly; the solve stops when that falls under `TOLERANCE` of the
tokens' variance, a few tens of iterations in practice, close to the exact solution's
held-out FVU (docs/LOG.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from monoscope.sae.base import SparseAutoencoder
from monoscope.sae.blocks import block_rows
from monoscope.sae.sparse import Pattern

TOLERANCE = 5e-5
"""The solve stops once an iteration lowers the training loss by less than this fraction of
the tokens' total variance (the FVU's denominator)."""

MAX_ITERATIONS = 200

BYTES_PER_CODE = 8
"""Memory a kept code takes at most: its latent (int16 below 32,768 latents, else int32) and
its value (float32)."""


@dataclass(frozen=True)
class RefitResult:
    rows: int
    """Tokens fitted."""
    iterations: int
    """Conjugate-gradient iterations run."""
    fvu_before: float
    """Training tokens' FVU with the trained decoder."""
    loss_after: float
    """Training tokens' squared error + ridge penalty with the refitted decoder, over their
    variance (an upper bound on their FVU)."""


def check_memory(tokens: int, codes_per_token: float) -> None:
    """ValueError if the refit's kept codes for `tokens` tokens would not fit in the memory
    this machine has available (checked before training, not after it)."""
    need = tokens * codes_per_token * BYTES_PER_CODE
    available = _available_memory()
    if available is not None and need > available:
        raise ValueError(
            f"--refit-decoder keeps the codes of every token trained on: {tokens:,} tokens at "
            f"~{codes_per_token:g} codes each need ~{need / 2**20:,.0f} MiB, more than the "
            f"{available / 2**20:,.0f} MiB available; refit a shorter run or leave it off"
        )


def refit_decoder(
    sae: SparseAutoencoder,
    batches: Iterable[Tensor],
    ridge: float,
    tolerance: float = TOLERANCE,
    max_iterations: int = MAX_ITERATIONS,
) -> RefitResult:
    """Replace `sae`'s decoder rows by the ridge (> 0) least-squares fit of raw `batches`
    (each [rows, d_in]) from their `sae.decoder_codes`."""
    if ridge <= 0:
        raise ValueError(f"the refit's ridge must be positive, got {ridge}")
    was_training = sae.training
    sae.eval()  # the codes inference gives (batchtopk: its threshold)
    try:
        with torch.no_grad():
            codes, residual, sums = _encode(sae, batches)
            if not codes:
                raise ValueError("--refit-decoder found no rows to fit")
            rows = sum(c.crow.shape[0] - 1 for c in codes)
            variance = sums.squares - float(sums.total.pow(2).sum()) / rows
            fvu_before = sums.error / variance if variance > 0 else float("nan")
            energy = float(sums.energy.mean())
            if energy == 0:  # no latent fired: nothing to fit
                return RefitResult(rows, 0, fvu_before, fvu_before)
            solve = _ConjugateGradient(codes, sums.energy, ridge * energy)
            gained, iterations = solve.run(
                sae.W_dec, residual, tolerance * variance, max_iterations
            )
            loss_after = (sums.error - gained) / variance if variance > 0 else float("nan")
            return RefitResult(rows, iterations, fvu_before, loss_after)
    finally:
        sae.train(was_training)


@dataclass
class _Codes:
    """Consecutive tokens' sparse codes, kept between iterations as one CSR block: its
    latents in the narrowest integer type that holds them, and big enough to be mapped on its
    own rather than laid among the pass's temporaries in the heap (held there in ~0.5 MiB
    pieces, they left 26 MiB of it free in holes: the refit's peak was 1.56x weights + Adam +
    batch instead of 1.44x)."""

    crow: Tensor  # [rows + 1] int64
    col: Tensor  # [nnz] int16 or int32
    values: Tensor  # [nnz]
    n_cols: int

    @classmethod
    def join(cls, parts: list[tuple[Pattern, Tensor]]) -> _Codes:
        offsets = [0]
        for pattern, _ in parts:
            offsets.append(offsets[-1] + pattern.nnz)
        crow = torch.cat(
            [p.crow[:-1] + offset for (p, _), offset in zip(parts, offsets, strict=False)]
            + [parts[0][0].crow.new_tensor([offsets[-1]])]
        )
        n_cols = parts[0][0].n_cols
        narrow = torch.int16 if n_cols <= torch.iinfo(torch.int16).max + 1 else torch.int32
        col = torch.cat([p.col.to(narrow) for p, _ in parts])
        return cls(crow, col, torch.cat([v for _, v in parts]), n_cols)

    def blocks(self, rows: int) -> Iterator[tuple[Pattern, Tensor]]:
        """(pattern, values) of `rows` tokens at a time."""
        n_rows = self.crow.shape[0] - 1
        for start in range(0, n_rows, rows):
            stop = min(start + rows, n_rows)
            lo, hi = int(self.crow[start]), int(self.crow[stop])
            crow = self.crow[start : stop + 1] - lo
            yield (
                Pattern(crow, self.col[lo:hi].long(), stop - start, self.n_cols),
                self.values[lo:hi],
            )


@dataclass
class _Sums:
    energy: Tensor  # diag ZᵀZ [n], float64
    total: Tensor  # Σ x over tokens [d], float64
    squares: float = 0.0  # Σ ||x||²
    error: float = 0.0  # Σ ||x − x_hat||² with the trained decoder


_ROWS = 4096
"""Tokens encoded, and multiplied by ZᵀZ, at a time."""

_KEPT_BLOCK_BYTES = 8 * 2**20
"""Codes are joined into blocks of about this size as the pass goes."""


def _encode(
    sae: SparseAutoencoder, batches: Iterable[Tensor]
) -> tuple[list[_Codes], Tensor, _Sums]:
    """One pass: every token's codes, the first residual Zᵀ(X − b_dec − Z W_dec) [n, d] and
    the sums the solve and its report need."""
    n, d = sae.cfg.n_features, sae.cfg.d_in
    W = sae.W_dec
    residual = torch.zeros(n, d, dtype=W.dtype, device=W.device)
    sums = _Sums(
        energy=torch.zeros(n, dtype=torch.float64, device=W.device),
        total=torch.zeros(d, dtype=torch.float64, device=W.device),
    )
    codes: list[_Codes] = []
    pending: list[tuple[Pattern, Tensor]] = []
    pending_codes = 0
    for batch in batches:
        for x in batch.split(_ROWS):
            pattern, values = sae.sparse_codes(x)
            target = sae.normalise(x).to(W.dtype)
            sums.total += target.sum(0, dtype=torch.float64)
            sums.squares += float(torch.dot(target.view(-1), target.view(-1)))
            error = pattern.subtract_product(values, W, target.sub_(sae.b_dec))
            sums.error += float(torch.dot(error.view(-1), error.view(-1)))
            pattern.transposed_product(values, error, out=residual, accumulate=True)
            sums.energy.index_add_(0, pattern.col, values.double().square())
            pattern.release_cache()
            pending.append((pattern, values.to(W.dtype)))
            pending_codes += pattern.nnz
            if pending_codes * BYTES_PER_CODE >= _KEPT_BLOCK_BYTES:
                codes.append(_Codes.join(pending))
                pending, pending_codes = [], 0
    if pending:
        codes.append(_Codes.join(pending))
    return codes, residual, sums


class _ConjugateGradient:
    """(ZᵀZ + λ I) W = B by preconditioned conjugate gradients, one system per column of W,
    ZᵀZ applied from the kept codes."""

    def __init__(self, codes: list[_Codes], energy: Tensor, strength: float) -> None:
        self.codes, self.strength = codes, strength
        self.inverse_diagonal = (1.0 / (energy + strength)).unsqueeze(1)  # [n, 1] float64

    def run(
        self, W: Tensor, residual: Tensor, stop_below: float, max_iterations: int
    ) -> tuple[float, int]:
        """Improve W [n, d] in place from `residual` = B − (ZᵀZ + λI) W (overwritten); return
        (the loss lowered in all, iterations run)."""
        inverse = self.inverse_diagonal.to(W.dtype)
        direction = residual * inverse
        product = torch.empty_like(W)
        rz = _column_dots(residual, direction)  # rᵀ M⁻¹ r per column [d], float64
        gained, iteration = 0.0, 0
        while iteration < max_iterations and bool((rz > 0).any()):
            iteration += 1
            self._apply(direction, product)
            curvature = _column_dots(direction, product)
            step = torch.where(curvature > 0, rz / curvature, 0.0)
            W.addcmul_(direction, step.to(W.dtype).unsqueeze(0))
            residual.addcmul_(product, step.to(W.dtype).unsqueeze(0), value=-1.0)
            lowered = float((step * rz).sum())
            gained += lowered
            rz_next = _column_dots(residual, residual, inverse)
            ratio = torch.where(rz > 0, rz_next / rz, 0.0).to(W.dtype)
            direction.mul_(ratio.unsqueeze(0)).addcmul_(residual, inverse)
            rz = rz_next
            if lowered < stop_below:
                break
        return gained, iteration

    def _apply(self, direction: Tensor, out: Tensor) -> None:
        """out = (ZᵀZ + λ I) direction, as Zᵀ(Z direction) a block of tokens at a time."""
        torch.mul(direction, self.strength, out=out)
        for kept in self.codes:
            for pattern, values in kept.blocks(_ROWS):
                decoded = pattern.product(values, direction)  # [rows, d]
                pattern.transposed_product(values, decoded, out=out, accumulate=True)


def _column_dots(a: Tensor, b: Tensor, weight: Tensor | None = None) -> Tensor:
    """Σ over rows of a * b (* weight [n, 1]), per column [d], in float64, a block of rows
    at a time (no [n, d] temporary)."""
    out = torch.zeros(a.shape[1], dtype=torch.float64, device=a.device)
    step = block_rows(a.shape[1] * a.element_size())
    for start in range(0, a.shape[0], step):
        part = a[start : start + step] * b[start : start + step]
        if weight is not None:
            part.mul_(weight[start : start + step])
        out += part.sum(0, dtype=torch.float64)
    return out


def _available_memory() -> int | None:
    """MemAvailable from /proc/meminfo in bytes (None where there is none: not Linux)."""
    try:
        lines = Path("/proc/meminfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None
