"""Where training activations come from: an activation store, or a plain [n, d] array file.

Both give deterministic epochs for a seed (so a resumed run sees the same batches), a held-out
split, and an outlier filter by per-token norm.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from monoscope.harvest import ActivationStore, StoreError

_ARRAY_HELDOUT = 0.05  # arrays carry no split: the last 5% of rows (a fixed rule) are held out


class StoreSource:
    """Training batches from a harvested activation store (one site)."""

    def __init__(self, path: str | Path, site: str | None = None) -> None:
        self.store = ActivationStore(path)
        self.site = self.store.resolve_site(site)
        self.d = self.store.d(self.site)
        self.model = self.store.manifest["model"]["name"]
        self.description = {"store": str(path), "site": self.site}

    def n_train_tokens(self) -> int:
        return int(self.store.n_tokens * (1 - self.store.heldout_fraction))

    def median_norm(self) -> float:
        return self.store.median_norm(self.site)

    def sample(self, n: int) -> Tensor:
        """The first n train rows [n, d] (float32), for normalisation and b_dec init."""
        return next(self.store.batches(n, self.site, shuffle=False))

    def epoch(self, batch_size: int, seed: int, max_norm: float | None) -> Iterator[Tensor]:
        return self.store.batches(
            batch_size, self.site, seed=seed, drop_last=True, max_norm=max_norm
        )

    def heldout(self, batch_size: int, max_norm: float | None = None) -> Iterator[Tensor]:
        return self.store.batches(
            batch_size, self.site, split="heldout", shuffle=False, max_norm=max_norm
        )


class ArraySource:
    """Training batches from a `.npy` or `.safetensors` file holding one [n, d] array."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if path.suffix == ".npy":
            data = torch.from_numpy(np.load(path, mmap_mode="r", allow_pickle=False).copy())
        elif path.suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors = load_file(path)
            if len(tensors) != 1:
                raise StoreError(
                    f"{path} holds {sorted(tensors)}: expected exactly one [n, d] array"
                )
            data = next(iter(tensors.values()))
        else:
            raise StoreError(f"{path}: activations must be a store folder, .npy or .safetensors")
        if data.ndim != 2:
            raise StoreError(f"{path}: expected an [n, d] array, got shape {tuple(data.shape)}")
        bad = ~torch.isfinite(data.float()).all(dim=-1)
        if bad.any():
            raise StoreError(
                f"non-finite activation (NaN or Inf) in {path}, row {int(bad.nonzero()[0])}"
            )
        n_train = int(data.shape[0] * (1 - _ARRAY_HELDOUT))
        self.train, self.test = data[:n_train], data[n_train:]
        self.norms = self.train.float().norm(dim=-1)
        self.d = data.shape[1]
        self.site = None
        self.model = None
        self.description = {"array": str(path)}

    def n_train_tokens(self) -> int:
        return self.train.shape[0]

    def median_norm(self) -> float:
        return float(self.norms.median())

    def sample(self, n: int) -> Tensor:
        return self.train[:n].float()

    def epoch(self, batch_size: int, seed: int, max_norm: float | None) -> Iterator[Tensor]:
        rows = torch.randperm(self.train.shape[0], generator=torch.Generator().manual_seed(seed))
        if max_norm is not None:
            rows = rows[self.norms[rows] <= max_norm]
        for start in range(0, rows.shape[0] - batch_size + 1, batch_size):
            yield self.train[rows[start : start + batch_size]].float()

    def heldout(self, batch_size: int, max_norm: float | None = None) -> Iterator[Tensor]:
        test = self.test.float()
        if max_norm is not None:
            test = test[test.norm(dim=-1) <= max_norm]
        yield from test.split(batch_size)


def open_source(path: str | Path, site: str | None = None) -> StoreSource | ArraySource:
    """A store folder, or an array file made elsewhere."""
    path = Path(path)
    if path.is_dir():
        return StoreSource(path, site)
    if not path.exists():
        raise StoreError(f"activations not found: {path}")
    return ArraySource(path)
