"""Nearest features by decoder cosine, without ever forming the [F, F] similarity matrix.

Exact search (`cosine_neighbours`): the similarities are computed a tile of rows x columns at a
time (BLOCK_ELEMENTS of them, 64 MiB of float32), each row block keeping a running top k as the
column blocks pass. Memory: the unit directions, one tile and the [F, k] results. Work: F² x d
multiply-adds, which is the limit: about 1 minute at 65k features and 4 at 131k on two CPU
cores, but hours at 1M (it is one matmul per tile, so a GPU takes it in about a minute).

Approximate search (`approximate_neighbours`), for dictionaries past AnalyzeConfig's
exact_neighbours (by default 131,072 features on the CPU, 2,097,152 on an accelerator): the
unit directions are clustered into about sqrt(F) lists by spherical k-means on a sample, every
feature is compared, exactly, with the members of the `probes` lists whose centroids are
nearest it, and keeps the best k. Work: F x probes x (F / lists) x d, about sqrt(F) / probes
times less than the exact search; features whose true neighbours sit in other lists miss them
(benchmarks/bigdict.py measures the recall against the exact search).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

EXACT_ON_CPU = 1 << 17
EXACT_ON_ACCELERATORS = 1 << 21
BLOCK_ELEMENTS = 1 << 24
"""Similarities computed at a time (64 MiB of float32), whatever the number of features."""
PROBES = 8
"""Lists (k-means clusters) each feature is compared with in the approximate search."""
KMEANS_ITERATIONS = 5
KMEANS_SAMPLE_PER_LIST = 64
"""Rows of the k-means sample per list (the sample, not all features, sets the centroids)."""


def unit_rows(w: Tensor) -> Tensor:
    """Rows of w [n, d] scaled to unit norm (all-zero rows stay zero), float32."""
    w = w.detach().float()
    return w / w.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)


def _merge(best: tuple[Tensor, Tensor], new: tuple[Tensor, Tensor], k: int):
    """The k largest of two (values [r, *], index [r, *]) candidate sets, row by row."""
    values = torch.cat([best[0], new[0]], 1)
    index = torch.cat([best[1], new[1]], 1)
    top = values.topk(k, dim=1)
    return top.values, index.gather(1, top.indices)


@torch.no_grad()
def cosine_neighbours(
    directions: Tensor, k: int, block_elements: int | None = None
) -> tuple[Tensor, Tensor]:
    """Each row's k most cosine-similar other rows of directions [n, d]:
    (index [n, k] int64, cosine [n, k] float32, on the CPU), closest first. Computed a
    [rows, columns] tile of at most `block_elements` (default BLOCK_ELEMENTS) similarities at
    a time."""
    unit = unit_rows(directions)
    query = torch.arange(unit.shape[0], device=unit.device)
    return nearest_of(unit, query, min(k, unit.shape[0] - 1), block_elements or BLOCK_ELEMENTS)


def exact_limit(device: torch.device) -> int:
    """The most features searched exactly by default on `device`: on an accelerator the exact
    search is one matmul a tile, F² x d multiply-adds (1M x 576: 1.2e15 FLOPs, under a minute
    at the tens of TFLOP/s of a datacenter GPU), where two CPU cores take hours at 1M."""
    return EXACT_ON_CPU if device.type == "cpu" else EXACT_ON_ACCELERATORS


def feature_neighbours(
    directions: Tensor, k: int, exact_up_to: int | None = None, seed: int = 0
) -> tuple[Tensor, Tensor, str]:
    """(index, cosine) [F, k] as cosine_neighbours for F <= exact_up_to (or exact_up_to 0;
    None: `exact_limit` of the directions' device), else approximate_neighbours; and which
    search ran ('exact', 'approximate', or 'none' for k 0: no work at all)."""
    if exact_up_to is None:
        exact_up_to = exact_limit(directions.device)
    n = directions.shape[0]
    if k == 0 or n < 2:
        empty = torch.zeros(n, 0)
        return empty.long(), empty, "none"
    if exact_up_to and n > exact_up_to:
        return (*approximate_neighbours(directions, k, seed=seed), "approximate")
    return (*cosine_neighbours(directions, k), "exact")


def nearest_of(
    unit: Tensor, query: Tensor, k: int, block_elements: int | None = None
) -> tuple[Tensor, Tensor]:
    """(index, cosine) [q, k] on the CPU: the k nearest other rows of unit [n, d] to the rows
    query [q], by tiles of rows x columns, a running top k per row block."""
    n, block_elements = unit.shape[0], block_elements or BLOCK_ELEMENTS
    columns = min(n, max(k + 1, math.isqrt(block_elements)))
    rows = max(1, block_elements // columns)
    index = torch.zeros(query.numel(), k, dtype=torch.int64)
    cosine = torch.zeros(query.numel(), k)
    for start in range(0, query.numel(), rows):
        q = query[start : start + rows]
        block = unit[q]
        best = torch.full((q.numel(), 0), -math.inf, device=unit.device)
        best_index = best.long()
        for c0 in range(0, n, columns):
            c1 = min(c0 + columns, n)
            sims = block @ unit[c0:c1].T  # [rows, columns]
            own = (q >= c0) & (q < c1)  # a feature is not its own neighbour
            sims[own.nonzero().flatten(), q[own] - c0] = -math.inf
            top = sims.topk(min(k, c1 - c0), dim=1)
            best, best_index = _merge((best, best_index), (top.values, top.indices + c0), k)
        cosine[start : start + q.numel()] = best.cpu()
        index[start : start + q.numel()] = best_index.cpu()
    return index, cosine


def _assign(unit: Tensor, centroids: Tensor, probes: int) -> Tensor:
    """Index [n, probes] of each row's nearest centroids, nearest first (blocked)."""
    rows = max(1, BLOCK_ELEMENTS // centroids.shape[0])
    return torch.cat([(b @ centroids.T).topk(probes, dim=1).indices for b in unit.split(rows)])


def _kmeans(unit: Tensor, lists: int, seed: int) -> Tensor:
    """Unit centroids [lists, d] of spherical k-means on a sample of the unit rows [n, d]."""
    g = torch.Generator().manual_seed(seed)
    sample = unit[torch.randperm(unit.shape[0], generator=g)[: lists * KMEANS_SAMPLE_PER_LIST]]
    centroids = sample[:lists].clone()
    for _ in range(KMEANS_ITERATIONS):
        nearest = _assign(sample, centroids, 1)[:, 0]
        sums = torch.zeros_like(centroids).index_add_(0, nearest, sample)
        empty = sums.norm(dim=1) == 0  # a list that lost every row keeps its centroid
        centroids = torch.where(empty[:, None], centroids, unit_rows(sums))
    return centroids


@torch.no_grad()
def approximate_neighbours(
    directions: Tensor, k: int, probes: int = PROBES, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """As cosine_neighbours, approximately (module docstring): each row of directions [n, d]
    compared with the members of its `probes` nearest k-means lists only (a row whose lists
    hold fewer than k others is searched exactly)."""
    n = directions.shape[0]
    k = min(k, n - 1)
    unit = unit_rows(directions)
    lists = max(1, math.isqrt(n))
    probes = min(probes, lists)
    centroids = _kmeans(unit, lists, seed)
    probed = _assign(unit, centroids, probes)  # [n, probes]
    home = probed[:, 0]  # each row is a member of its nearest list
    members = torch.sort(home, stable=True).indices
    bounds = torch.searchsorted(home[members], torch.arange(lists + 1, device=home.device))
    flat = probed.flatten()
    askers = torch.sort(flat, stable=True).indices  # rows probing each list, by list
    ask_bounds = torch.searchsorted(flat[askers], torch.arange(lists + 1, device=flat.device))
    best_v = torch.full((n, k), -math.inf, device=unit.device)
    best_i = torch.full((n, k), -1, dtype=torch.int64, device=unit.device)
    for j in range(lists):
        cand = members[bounds[j] : bounds[j + 1]]
        if not cand.numel():
            continue
        query_rows = askers[ask_bounds[j] : ask_bounds[j + 1]] // probes
        for q in query_rows.split(max(1, BLOCK_ELEMENTS // cand.numel())):
            sims = unit[q] @ unit[cand].T  # [queries, members]
            sims[q[:, None] == cand[None, :]] = -math.inf
            top = sims.topk(min(k, cand.numel()), dim=1)
            best_v[q], best_i[q] = _merge(
                (best_v[q], best_i[q]), (top.values, cand[top.indices]), k
            )
    short = (best_i < 0).any(1).nonzero().flatten()
    if short.numel():
        best_i[short], best_v[short] = (t.to(unit.device) for t in nearest_of(unit, short, k))
    return best_i.cpu(), best_v.cpu()
