"""`BatchShares`: a training batch split over data-parallel processes.

Each process holds an equal slice of the rows of every batch. For their gradients to add up to
the gradient of the whole batch's loss, each process's loss must be its share of that loss:
sums over its rows divided by the whole batch's row count and centred variance, never by its
own. The architectures' training steps take both from here; with one process (`parts` 1) they
are the batch's own, computed as they always were, so a single-process run is unchanged to the
bit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from monoscope.sae.blocks import block_rows


def _unchanged(tensor: Tensor) -> Tensor:
    return tensor


@dataclass(frozen=True)
class BatchShares:
    """How the rows of a training batch are shared out: `parts` processes hold equal slices,
    `sum_` adds a tensor over them in place (an all-reduce; identity for one process), and
    `gather` puts every process's 1-D tensor end to end in rank order (an all-gather)."""

    parts: int = 1
    sum_: Callable[[Tensor], Tensor] = _unchanged
    gather: Callable[[Tensor], Tensor] = _unchanged

    def rows(self, x: Tensor) -> int:
        """Rows of the whole batch, from this process's slice x [rows, d]."""
        return x.shape[0] * self.parts

    def mean(self, values: Tensor) -> Tensor:
        """The whole batch's mean of per-row `values` [rows], from this process's rows."""
        if self.parts == 1:
            return values.mean()
        return values.sum() / (values.shape[0] * self.parts)

    def nth_largest(self, values: Tensor, n: int) -> Tensor:
        """The n-th largest of every process's `values` [m] together (-inf where they hold
        fewer than n): each process offers its own top n, which hold the union's."""
        top = values.topk(min(n, values.numel()), sorted=False).values
        if top.numel() < n:
            top = torch.cat([top, top.new_full((n - top.numel(),), float("-inf"))])
        return self.gather(top).topk(n, sorted=False).values.min()

    def total_variance(self, x: Tensor, scale: float = 1.0) -> Tensor:
        """Σ ||x_n * scale - mean||² over the whole batch's rows, the mean being the whole
        batch's, from this process's slice x [rows, d] (at least 1e-12)."""
        if self.parts == 1:
            return total_variance(x, scale)
        mean = self.sum_(x.sum(0)) / self.rows(x)
        return (self.sum_(_centred_square_sum(x, mean)) * scale**2).clamp_min(1e-12)


def total_variance(x: Tensor, scale: float = 1.0) -> Tensor:
    """Σ ||x_n * scale - mean||^2 over the rows of x [batch, d] (at least 1e-12).

    Centred a block of rows at a time, so the centred copy stays in cache (torch.var over
    dim 0 is several times slower, and a whole centred copy is another [batch, d] tensor)."""
    return (_centred_square_sum(x, x.mean(0)) * scale**2).clamp_min(1e-12)


def _centred_square_sum(x: Tensor, mean: Tensor) -> Tensor:
    """Σ ||x_n - mean||² over the rows of x [batch, d]."""
    total = x.new_zeros(())
    for block in torch.split(x, block_rows(x.shape[1] * x.element_size())):
        centred = (block - mean).view(-1)
        total = total + torch.dot(centred, centred)
    return total
