"""Example windows: the tokens around each example's centre and the feature's activation on
each, read back from the store after the pass.

Only the shards holding an example are read (rows of a context are contiguous in a shard, in
position order). Activations come from the pass's code cache; rows it does not hold are encoded
again with the SAE, each once: no model forward, and memory bounded by one shard plus one batch
of activations.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from monoscope.analyze.codes import CodeCache
from monoscope.harvest import ActivationStore, StoreError
from monoscope.runtime import intra_op_threads

CHUNK = 1 << 14
"""Examples whose windows are read at a time."""

Encode = Callable[[Tensor], Tensor]
"""Raw activations [b, d_in] -> feature activations [b, n_features] (sets its own threads)."""


@dataclass
class Windows:
    """Per example e: tokens[e, :length[e]] and acts[e, :length[e]] (the example's feature on
    each token), the centre token at index centre[e]. Shapes [e, window] and [e]; token ids
    int32, -1 past the length."""

    tokens: Tensor
    acts: Tensor
    length: Tensor
    centre: Tensor


def _shard_examples(store: ActivationStore, contexts: Tensor) -> Iterator[tuple[int, Tensor]]:
    """(shard index, indices of the examples whose context it holds), for shards holding any."""
    for i, entry in enumerate(store.shards):
        first = entry["first_context"]
        mine = ((contexts >= first) & (contexts < first + entry["n_contexts"])).nonzero()
        if mine.numel():
            yield i, mine.flatten()


def _local_rows(shard: dict[str, Tensor], contexts: Tensor, positions: Tensor, file: str):
    """Row of each (context, position) in a shard, and the row span [start, end) of its
    context; StoreError if the shard does not hold it."""
    index = shard["context_index"]
    start = torch.searchsorted(index, contexts)
    end = torch.searchsorted(index, contexts, right=True)
    first_pos = shard["position"][start.clamp(max=index.numel() - 1)].long()
    rows = start + positions - first_pos
    safe = rows.clamp(0, index.numel() - 1)
    ok = (rows >= start) & (rows < end) & (index[safe] == contexts)
    ok &= shard["position"][safe].long() == positions
    if not bool(ok.all()):
        bad = int((~ok).nonzero()[0])
        raise StoreError(
            f"{file} holds no token at context {int(contexts[bad])}, position "
            f"{int(positions[bad])}: the store changed since it was analysed"
        )
    return rows, start, end


def read_rows(store: ActivationStore, site: str, locs: Tensor, context: int) -> Tensor:
    """Activations [n, d] (float32) of the tokens at locs [n] (context * context + position)."""
    out = torch.zeros(locs.numel(), store.d(site))
    contexts, positions = locs // context, locs % context
    for i, mine in _shard_examples(store, contexts):
        shard = store.load_shard(i)
        file = store.shards[i]["file"]
        rows, _, _ = _local_rows(shard, contexts[mine], positions[mine], file)
        out[mine] = shard[f"acts.{site}"][rows].float()
    return out


@dataclass
class WindowReader:
    """Reads example windows: up to `before` tokens before each centre and `after` after it,
    within the centre's context and up to the last analysed token `last_loc`; activations from
    `cache` where it holds the row, else re-encoded `batch_size` rows at a time."""

    store: ActivationStore
    site: str
    encode: Encode
    cache: CodeCache
    context: int
    before: int
    after: int
    last_loc: int
    batch_size: int

    def read(self, features: Tensor, locs: Tensor) -> Iterator[tuple[Tensor, Windows]]:
        """(indices [m] into the examples, their Windows) for the examples e (feature [e],
        loc [e]), a shard and a chunk at a time, so memory does not grow with their number."""
        contexts = locs // self.context
        for i, mine in _shard_examples(self.store, contexts):
            shard = self.store.load_shard(i)
            # In store order: a chunk's windows overlap each other rather than other chunks'
            # (fewer rows encoded twice when the cache does not hold them).
            for part in mine[locs[mine].argsort()].split(CHUNK):
                # Index work on ~10^5 entries: one thread (see runtime.intra_op_threads); the
                # encode of rows the cache lacks sets its own.
                with intra_op_threads(1):
                    windows = self._chunk(
                        shard, self.store.shards[i]["file"], features[part], locs[part]
                    )
                yield part, windows

    def _chunk(self, shard: dict[str, Tensor], file: str, features: Tensor, locs: Tensor):
        shard_locs = shard["context_index"] * self.context + shard["position"].long()
        limit = int(torch.searchsorted(shard_locs, self.last_loc, right=True))
        centre, start, end = _local_rows(shard, locs // self.context, locs % self.context, file)
        low = torch.maximum(start, centre - self.before)
        length = torch.minimum(end.clamp(max=limit), centre + self.after + 1) - low
        offsets = torch.arange(self.before + 1 + self.after)
        inside = offsets < length[:, None]  # [m, width]
        rows = (low[:, None] + offsets).masked_fill(~inside, 0)
        feats = features[:, None].expand_as(rows)
        values, held = self.cache.lookup(shard_locs[rows[inside]], feats[inside])
        acts = torch.zeros(rows.shape)
        acts[inside] = values
        missing = inside.clone()
        missing[inside] = ~held
        _encode_missing(
            shard[f"acts.{self.site}"], self.encode, rows, feats, missing, acts, self.batch_size
        )
        tokens = shard["token_ids"][rows].int().masked_fill(~inside, -1)
        return Windows(tokens=tokens, acts=acts, length=length, centre=centre - low)


def _encode_missing(
    acts: Tensor,
    encode: Encode,
    rows: Tensor,
    feats: Tensor,
    missing: Tensor,
    out: Tensor,
    batch_size: int,
) -> None:
    """out[missing] = the feature feats[missing] on shard row rows[missing], encoding each
    needed row once, batch_size rows at a time. rows, feats, missing, out: [m, width]."""
    needed = rows[missing]
    if not needed.numel():
        return
    unique, slot = torch.unique(needed, return_inverse=True)  # slot: index into unique
    order = torch.sort(slot, stable=True).indices
    bounds = torch.searchsorted(
        slot[order], torch.arange(0, unique.numel() + batch_size, batch_size)
    )
    values = torch.zeros(needed.numel())
    wanted = feats[missing]
    for b, b0 in enumerate(range(0, unique.numel(), batch_size)):
        f = encode(acts[unique[b0 : b0 + batch_size]].float())  # [<= batch_size, n_features]
        at = order[bounds[b] : bounds[b + 1]]
        values[at] = f[slot[at] - b0, wanted[at]]
    out[missing] = values
