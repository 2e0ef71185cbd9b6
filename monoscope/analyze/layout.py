"""The feature map: UMAP (cosine metric) of the decoder directions, 2-D.

UMAP is given the exact cosine nearest neighbours (from the blocked matmul of neighbours.py)
instead of searching for approximate ones itself: its own search (NN-descent, compiled by numba
in every new process) was most of the fit's time (docs/LOG.md). A fixed random_state makes the
map reproducible, at the price of umap's single-threaded path. umap-learn is an optional
dependency: pip install 'monoscope[map]'.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from monoscope.analyze.neighbours import unit_rows

MIN_FEATURES = 4
"""UMAP's spectral initialisation needs a few points."""
NEIGHBOURS = 15
"""UMAP's n_neighbors (its default): each feature and its 14 nearest."""


def require_umap() -> None:
    """ImportError naming the extra unless umap-learn imports."""
    try:
        import umap  # noqa: F401
    except ImportError:
        raise ImportError(
            "the feature map needs umap-learn: pip install 'monoscope[map]' (or pass --no-map)"
        ) from None


def feature_map(knn_index: Tensor, knn_cosine: Tensor, directions: Tensor, epochs: int, seed: int):
    """2-D coordinates [F, 2] of the rows of directions [F, d] by cosine UMAP on their
    nearest neighbours knn_index, knn_cosine [F, k] (closest first, k + 1 = UMAP's
    n_neighbors)."""
    require_umap()
    import umap

    n, k = knn_index.shape
    if n < MIN_FEATURES or k < 1:
        raise ValueError(f"a map needs at least {MIN_FEATURES} features, the SAE has {n}")
    # UMAP's neighbour lists start with the point itself, at distance 0.
    index = torch.cat([torch.arange(n)[:, None], knn_index], 1).int().numpy()
    distance = torch.cat([torch.zeros(n, 1), (1 - knn_cosine).clamp_min(0)], 1).numpy()
    reducer = umap.UMAP(
        n_components=2,
        metric="cosine",
        n_neighbors=k + 1,
        n_epochs=epochs,
        random_state=seed,
        precomputed_knn=(index, distance, None),
    )
    with warnings.catch_warnings():
        # "n_jobs value 1 overridden to 1 by setting random_state" is the intended trade;
        # "transform will be unavailable": new points are never mapped here.
        warnings.simplefilter("ignore", UserWarning)
        coords = reducer.fit_transform(unit_rows(directions).numpy())
    return torch.from_numpy(coords.astype("float32"))
