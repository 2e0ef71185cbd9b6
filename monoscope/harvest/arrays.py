"""`ArraySource`: activations in a plain [n, d] array file (.npy or .safetensors) made
elsewhere, read like an activation store by `train` and `eval` (it sits here, below both).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from monoscope.harvest.store import StoreError, first_nonfinite_row

ARRAY_HELDOUT = 0.05
"""Arrays carry no split: the last 5% of rows (a fixed rule) are held out."""


class ArraySource:
    """Training batches from a `.npy` or `.safetensors` file holding one [n, d] array."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if path.suffix == ".npy":
            try:
                array = np.load(path, mmap_mode="r", allow_pickle=False).copy()
            except (ValueError, OSError, EOFError) as err:
                raise StoreError(f"{path} cannot be read as a .npy array: {err}") from err
            if array.dtype.kind not in "fiub":
                raise StoreError(f"{path} holds {array.dtype} values, not real numbers")
            data = torch.from_numpy(array)
        elif path.suffix == ".safetensors":
            from safetensors.torch import load_file

            try:
                tensors = load_file(path)
            except Exception as err:  # safetensors raises its own types for malformed files
                raise StoreError(f"{path} cannot be read as safetensors: {err}") from err
            if len(tensors) != 1:
                raise StoreError(
                    f"{path} holds {sorted(tensors)}: expected exactly one [n, d] array"
                )
            data = next(iter(tensors.values()))
        else:
            raise StoreError(f"{path}: activations must be a store folder, .npy or .safetensors")
        if data.ndim != 2:
            raise StoreError(f"{path}: expected an [n, d] array, got shape {tuple(data.shape)}")
        row = first_nonfinite_row(data)
        if row is not None:
            raise StoreError(f"non-finite activation (NaN or Inf) in {path}, row {row}")
        self.data = data
        n_train = int(data.shape[0] * (1 - ARRAY_HELDOUT))
        self.train, self.test = data[:n_train], data[n_train:]
        self.norms = self.train.float().norm(dim=-1)
        self.d = data.shape[1]
        self.site = None
        self.model = None
        self.description = {"array": str(path)}

    def n_train_tokens(self) -> int:
        return self.train.shape[0]

    def fingerprint(self) -> str:
        """Changes with the data: a sha256 of the array's bytes."""
        # An ndarray is a buffer; numpy's stubs declare its __buffer__ only for Python >= 3.12.
        digest = hashlib.sha256(self.data.flatten().view(torch.uint8).numpy())  # type: ignore[arg-type]
        return f"{tuple(self.data.shape)} {self.data.dtype} {digest.hexdigest()}"

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
