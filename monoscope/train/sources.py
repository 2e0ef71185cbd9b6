"""Where training activations come from: an activation store, or a plain [n, d] array file.

All give deterministic epochs for a seed (so a resumed run sees the same batches), a held-out
split, and an outlier filter by per-token norm. An epoch's batches are the trainer's own: fresh
tensors, or views of a pool that is not read again, so the trainer may write over them (it
rotates them in place into Adam's basis).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor

from monoscope.harvest import ActivationStore, StoreError
from monoscope.harvest.arrays import ArraySource


class Source(Protocol):
    """What training reads: StoreSource, ArraySource or ModelSource."""

    @property
    def d(self) -> int: ...
    @property
    def site(self) -> str | None: ...
    @property
    def model(self) -> str | None: ...
    @property
    def description(self) -> Mapping[str, object]:
        """What the rows are, as JSON (recorded with the trained SAE)."""

    def n_train_tokens(self) -> int: ...
    def fingerprint(self) -> str: ...
    def median_norm(self) -> float: ...
    def sample(self, n: int) -> Tensor: ...
    def epoch(self, batch_size: int, seed: int, max_norm: float | None) -> Iterator[Tensor]: ...
    def heldout(self, batch_size: int, max_norm: float | None = None) -> Iterator[Tensor]: ...


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

    def fingerprint(self) -> str:
        """Changes with the data: the shards' checksums, the site and the split."""
        shards = [(shard["file"], shard["sha256"]) for shard in self.store.shards]
        return _sha256_json([shards, self.site, self.store.heldout_fraction])

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


class ModelSource:
    """Training batches straight from a model's forward passes: nothing is stored.

    Contexts come from the corpus in its deterministic order; held-out contexts are skipped by
    the same hash rule as a store's split; rows (BOS excluded) are pooled in a buffer of
    `buffer_tokens` and shuffled there. One epoch is one pass over the corpus.
    """

    BUFFER_TOKENS = 1 << 17

    def __init__(
        self,
        model: str,
        site: str,
        corpus: str,
        context: int = 128,
        model_dtype: str = "float32",
        buffer_tokens: int = BUFFER_TOKENS,
        heldout_fraction: float = 0.05,
    ) -> None:
        from monoscope.data import CorpusSpec
        from monoscope.models import load_model

        if not site:
            raise ValueError("streaming needs --site, e.g. blocks.15.hook_resid_post")
        self.lm = load_model(model, dtype=model_dtype)
        self.lm.site(site)  # unknown sites fail now
        self.spec = CorpusSpec(corpus)
        self.spec.validate()
        self.site, self.context = site, context
        self.d = self.lm.site(site).width
        self.model = self.lm.name
        self.buffer_tokens, self.heldout_fraction = buffer_tokens, heldout_fraction
        self.description = {"model": model, "site": site, "corpus": corpus, "context": context}
        # The forward batches of the sample: an epoch starts with them (the same rows, bit for
        # bit) instead of running the model over them a second time.
        self._sample_batches: list[Tensor] = []

    def n_train_tokens(self) -> int:
        raise ValueError("streaming from a model has no fixed size: pass --tokens")

    def fingerprint(self) -> str:
        """The stream's settings (model, site, corpus, context); the trainer checks these
        anyway, and the activations themselves need not be bit-identical on another machine."""
        return _sha256_json(self.description)

    def _rows(self, split: str, skip: int = 0) -> Iterator[Tensor]:
        """Activations [n, d] of the split's contexts, a forward batch at a time; the first
        `skip` of those batches are passed over without running the model."""
        from monoscope.data import iter_contexts
        from monoscope.harvest import heldout_mask

        per_batch = max(1, 4096 // self.context)
        contexts = iter_contexts(self.spec, self.lm.tokenizer, self.context)
        indexed = zip(itertools.count(), contexts, strict=False)
        while chunk := list(itertools.islice(indexed, per_batch)):
            held = heldout_mask(torch.tensor([i for i, _ in chunk]), self.heldout_fraction)
            keep = [
                c.tokens
                for (_, c), h in zip(chunk, held.tolist(), strict=True)
                if h == (split == "heldout")
            ]
            if keep and skip:
                skip -= 1
            elif keep:
                acts = self.lm.capture(torch.tensor(keep), [self.site])[self.site]
                yield acts[:, 1:].reshape(-1, self.d).float().cpu()

    def _train_rows(self) -> Iterator[Tensor]:
        """`_rows("train")`, its first batches taken from the sample's."""
        yield from self._sample_batches
        yield from self._rows("train", skip=len(self._sample_batches))

    def sample(self, n: int) -> Tensor:
        if sum(acts.shape[0] for acts in self._sample_batches) < n:
            self._sample_batches, held = [], 0
            for acts in self._rows("train"):
                self._sample_batches.append(acts)
                held += acts.shape[0]
                if held >= n:
                    break
        return torch.cat(self._sample_batches)[:n]

    def median_norm(self) -> float:
        return float(self.sample(16_384).norm(dim=-1).median())

    def epoch(self, batch_size: int, seed: int, max_norm: float | None) -> Iterator[Tensor]:
        gen = torch.Generator().manual_seed(seed)
        pool: list[Tensor] = []
        held = 0

        def shuffled_batches() -> Iterator[Tensor]:
            mixed = torch.cat(pool)
            mixed = mixed[torch.randperm(mixed.shape[0], generator=gen)]
            full = mixed.shape[0] - mixed.shape[0] % batch_size
            yield from mixed[:full].split(batch_size)
            pool[:] = [mixed[full:]]

        for acts in self._train_rows():
            if max_norm is not None:
                acts = acts[acts.norm(dim=-1) <= max_norm]
            pool.append(acts)
            held += acts.shape[0]
            if held >= self.buffer_tokens:
                yield from shuffled_batches()
                held = pool[0].shape[0]
        yield from shuffled_batches()  # the corpus ended: what is left, in full batches

    def heldout(self, batch_size: int, max_norm: float | None = None) -> Iterator[Tensor]:
        for acts in self._rows("heldout"):
            if max_norm is not None:
                acts = acts[acts.norm(dim=-1) <= max_norm]
            yield from acts.split(batch_size)


def open_source(path: str | Path, site: str | None = None) -> StoreSource | ArraySource:
    """A store folder, or an array file made elsewhere."""
    path = Path(path)
    if path.is_dir():
        return StoreSource(path, site)
    if not path.exists():
        raise StoreError(f"activations not found: {path}")
    if site:
        raise StoreError(f"--site {site} picks a site of a store; {path} is one array")
    return ArraySource(path)


def _sha256_json(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()
