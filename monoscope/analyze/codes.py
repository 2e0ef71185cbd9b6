"""`CodeCache`: the pass's non-zero activations, kept (up to a budget) for the example windows.

Windows need each example's feature on the tokens around it; rows the cache holds need no
second encode. It keeps whole rows from the start of the stream until `capacity` entries are
held (12 bytes each), then stops growing: memory is bounded by the budget, not the store. For a
small store (the demo's 200k tokens at L0 32: 6.4M entries) that is every row, for a large one
the windows of later rows are re-encoded from the store.
"""

from __future__ import annotations

import torch
from torch import Tensor


class CodeCache:
    """Entries (row, feature, value) of a prefix of the stream, rows located by loc.

    Stored flat and sorted: key = cached row index * n_features + feature (the order nonzero()
    yields), so a lookup is one searchsorted.
    """

    def __init__(self, n_features: int, capacity: int) -> None:
        self.n_features, self.capacity = n_features, capacity
        self.full = capacity == 0
        self._keys: list[Tensor] = []
        self._values: list[Tensor] = []
        self._locs: list[Tensor] = []
        self._rows = self._entries = 0

    def add(self, rows: Tensor, feats: Tensor, values: Tensor, locs: Tensor) -> None:
        """A batch's entries (rows [nnz] into the batch, row-major order) and its locs [b]."""
        if self.full or self._entries + rows.numel() > self.capacity:
            self.full = True
            return
        self._keys.append((rows + self._rows) * self.n_features + feats)
        self._values.append(values.float())
        self._locs.append(locs)
        self._rows += locs.numel()
        self._entries += rows.numel()

    def state(self) -> dict[str, Tensor]:
        """Tensors for a checkpoint (the cache is compacted to one chunk each)."""
        for chunks in (self._keys, self._values, self._locs):
            if len(chunks) != 1:
                chunks[:] = [torch.cat(chunks) if chunks else torch.zeros(0)]
        return {
            "cache_keys": self._keys[0].long(),
            "cache_values": self._values[0].float(),
            "cache_locs": self._locs[0].long(),
            "cache_full": torch.tensor(self.full),
        }

    def load_state(self, state: dict[str, Tensor]) -> None:
        self._keys, self._values = [state["cache_keys"]], [state["cache_values"]]
        self._locs = [state["cache_locs"]]
        self._rows, self._entries = self._locs[0].numel(), self._keys[0].numel()
        self.full = bool(state["cache_full"])

    def lookup(self, locs: Tensor, feats: Tensor) -> tuple[Tensor, Tensor]:
        """(values [n], held [n]): the activation of feature feats[i] at locs[i] (0 where it
        did not fire), and whether the cache holds that row at all. The cached locs increase
        (the stream is in store order), so rows are found by searchsorted too."""
        state = self.state()
        cached_locs, keys = state["cache_locs"], state["cache_keys"]
        values = torch.zeros(locs.numel())
        if not cached_locs.numel():
            return values, torch.zeros(locs.numel(), dtype=torch.bool)
        row = torch.searchsorted(cached_locs, locs).clamp_(max=cached_locs.numel() - 1)
        held = cached_locs[row] == locs
        if keys.numel():
            key = row * self.n_features + feats
            at = torch.searchsorted(keys, key).clamp_(max=keys.numel() - 1)
            fired = held & (keys[at] == key)
            values[fired] = state["cache_values"][at[fired]]
        return values, held
