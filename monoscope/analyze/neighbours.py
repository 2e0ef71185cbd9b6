"""Nearest features by decoder cosine: blocked matmuls, never the whole [F, F] matrix."""

from __future__ import annotations

import torch
from torch import Tensor

BLOCK_ELEMENTS = 1 << 24
"""Similarities computed at a time (64 MiB of float32), whatever the number of features."""


def unit_rows(w: Tensor) -> Tensor:
    """Rows of w [n, d] scaled to unit norm (all-zero rows stay zero), float32."""
    w = w.detach().float()
    return w / w.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)


@torch.no_grad()
def cosine_neighbours(directions: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Each row's k most cosine-similar other rows of directions [n, d]:
    (index [n, k] int64, cosine [n, k] float32), closest first."""
    n = directions.shape[0]
    k = min(k, n - 1)
    unit = unit_rows(directions)
    index = torch.zeros(n, k, dtype=torch.int64)
    cosine = torch.zeros(n, k)
    rows = max(1, BLOCK_ELEMENTS // n)
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        sims = unit[start:stop] @ unit.T  # [rows, n]
        own = torch.arange(stop - start)
        sims[own, own + start] = -float("inf")  # a feature is not its own neighbour
        cosine[start:stop], index[start:stop] = sims.topk(k, dim=1)
    return index, cosine
