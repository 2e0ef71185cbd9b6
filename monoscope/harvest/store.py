"""Reading an activation store: manifest, integrity checks, shuffled batches, splits, ranks.

A store is a folder with `manifest.json` and shards (see `shards.py`). The manifest is the
single source of truth: a shard file that it does not list (left by a crash between writing a
shard and recording it) is ignored and overwritten on resume.
"""

from __future__ import annotations

import random
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from monoscope.artifacts import STORE_FORMAT_VERSION, CorruptFileError, read_sealed_json
from monoscope.harvest.shards import INDEX_KEYS, read_shard

MANIFEST = "manifest.json"
_GOLDEN = 2654435761  # Knuth's multiplicative hash: spreads consecutive context ids evenly


def first_nonfinite_row(values: Tensor) -> int | None:
    """The first row of `values` [n, d] holding a NaN or Inf; None if there is none.

    One sum decides first (a NaN or Inf makes it non-finite; so may an overflow, and then the
    rows, searched, hold none): far cheaper than isfinite(values), which forms a bool per entry
    (docs/LOG.md)."""
    if torch.isfinite(values.sum()):
        return None
    bad = ~torch.isfinite(values).all(dim=-1)
    return int(bad.nonzero()[0]) if bad.any() else None


class StoreError(ValueError):
    """A store that is missing, incomplete, or does not fit where it was passed."""


def _check_finite(acts: Tensor, file: str, site: str) -> None:
    row = first_nonfinite_row(acts)
    if row is not None:
        raise StoreError(f"non-finite activation (NaN or Inf) in {file}, row {row}, site {site}")


def heldout_mask(context_index: Tensor, fraction: float) -> Tensor:
    """True for rows whose context is in the held-out split.

    Whole contexts go to one split (no token of a held-out context is trained on), and the
    choice depends only on the context id, so it is the same for every reader and rank.
    """
    hashed = (context_index * _GOLDEN) % (1 << 32)
    return hashed < int(fraction * (1 << 32))


class ActivationStore:
    """A read-only view of a harvested activation store."""

    def __init__(self, path: str | Path, allow_incomplete: bool = False) -> None:
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        if not manifest_path.exists():
            raise StoreError(f"{self.path} is not an activation store (no {MANIFEST})")
        try:
            self.manifest: dict[str, Any] = read_sealed_json(manifest_path)
        except CorruptFileError as err:
            raise StoreError(
                f"{err}: restore it, or harvest the store again (harvest --overwrite)"
            ) from err
        if self.manifest.get("format") != "monoscope.activation_store":
            raise StoreError(f"{manifest_path} is not a monoscope activation-store manifest")
        if self.manifest.get("version") != STORE_FORMAT_VERSION:
            raise StoreError(
                f"{manifest_path} has store format version {self.manifest.get('version')}, "
                f"this monoscope reads version {STORE_FORMAT_VERSION}"
            )
        if not self.manifest["complete"] and not allow_incomplete:
            raise StoreError(
                f"store {self.path} is incomplete ({self.n_tokens} of "
                f"{self.manifest['target_tokens']} tokens): rerun the harvest to finish it"
            )

    # -- description -------------------------------------------------------------------
    @property
    def sites(self) -> list[str]:
        return list(self.manifest["sites"])

    @property
    def n_tokens(self) -> int:
        return int(self.manifest["tokens"])

    @property
    def shards(self) -> list[dict[str, Any]]:
        shards: list[dict[str, Any]] = self.manifest["shards"]
        return shards

    @property
    def heldout_fraction(self) -> float:
        return float(self.manifest["heldout_fraction"])

    def d(self, site: str | None = None) -> int:
        return int(self.manifest["sites"][self.resolve_site(site)]["d"])

    def mean_norm(self, site: str | None = None) -> float:
        return float(self.manifest["sites"][self.resolve_site(site)]["mean_norm"])

    def resolve_site(self, site: str | None) -> str:
        if site is None:
            if len(self.sites) != 1:
                raise StoreError(f"store {self.path} holds several sites {self.sites}: name one")
            return self.sites[0]
        if site not in self.manifest["sites"]:
            raise StoreError(f"store {self.path} has no site {site!r}; it holds {self.sites}")
        return site

    def check_compatible(
        self, model: str | None = None, revision: str | None = None, site: str | None = None
    ) -> None:
        """Raise StoreError unless this store came from `model` (and revision) at `site`."""
        recorded = self.manifest["model"]
        if model is not None and recorded["name"] != model:
            raise StoreError(
                f"store {self.path} was harvested from model {recorded['name']!r}, not {model!r}"
            )
        if revision is not None and recorded["revision"] != revision:
            raise StoreError(
                f"store {self.path} was harvested from revision {recorded['revision']!r} of "
                f"{recorded['name']!r}, not {revision!r}"
            )
        if site is not None:
            self.resolve_site(site)

    # -- reading -----------------------------------------------------------------------
    def load_shard(self, index: int, verify: bool = True) -> dict[str, Tensor]:
        """All tensors of shard `index` (see shards.py for the keys), checksum verified."""
        entry = self.shards[index]
        return read_shard(self.path / entry["file"], entry, verify=verify)

    def verify(self) -> None:
        """Check every shard's size and sha256; CorruptShardError names the first bad one."""
        for i in range(len(self.shards)):
            self.load_shard(i)

    def shard_indices(self, rank: int = 0, world_size: int = 1) -> list[int]:
        """The shards a distributed rank reads: disjoint across ranks, together all shards."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        return list(range(rank, len(self.shards), world_size))

    def rows(
        self,
        site: str | None = None,
        split: str = "train",
        rank: int = 0,
        world_size: int = 1,
        shuffle_shards: bool = False,
        seed: int = 0,
        max_norm: float | None = None,
    ) -> Iterator[tuple[Tensor, dict[str, Tensor]]]:
        """Per shard: (activations [n, d], index tensors {token_ids, context_index, ...}) of
        the rows in `split` ("train", "heldout" or "all"), without rows whose stored norm
        exceeds `max_norm` (outlier tokens) when given.

        A non-finite activation stops the read with a StoreError naming the shard and row.
        """
        site = self.resolve_site(site)
        if split not in ("train", "heldout", "all"):
            raise ValueError(f"split must be 'train', 'heldout' or 'all', not {split!r}")
        order = self.shard_indices(rank, world_size)
        if shuffle_shards:
            random.Random(seed).shuffle(order)
        for index in order:
            shard = self.load_shard(index)
            acts = shard[f"acts.{site}"]
            _check_finite(acts, self.shards[index]["file"], site)
            meta = {k: shard[k] for k in INDEX_KEYS}
            meta["norms"] = shard[f"norms.{site}"]
            keep = torch.ones(acts.shape[0], dtype=torch.bool)
            if split != "all":
                held = heldout_mask(meta["context_index"], self.heldout_fraction)
                keep &= held if split == "heldout" else ~held
            if max_norm is not None:
                keep &= meta["norms"] <= max_norm
            yield acts[keep], {k: v[keep] for k, v in meta.items()}

    def median_norm(self, site: str | None = None, max_rows: int = 1 << 20) -> float:
        """Median per-token activation norm over (up to max_rows of) the train split."""
        norms, held = [], 0
        for _, meta in self.rows(site, "train"):
            norms.append(meta["norms"])
            held += norms[-1].shape[0]
            if held >= max_rows:
                break
        return float(torch.cat(norms).median())

    def batches(
        self,
        batch_size: int,
        site: str | None = None,
        split: str = "train",
        shuffle: bool = True,
        seed: int = 0,
        buffer_tokens: int = 1 << 18,
        rank: int = 0,
        world_size: int = 1,
        dtype: torch.dtype = torch.float32,
        drop_last: bool = False,
        max_norm: float | None = None,
    ) -> Iterator[Tensor]:
        """Batches of activations [batch_size, d], shuffled over tokens.

        Shards are read in a seeded random order and pooled until `buffer_tokens` rows are held;
        the pool is permuted and emitted, so memory stays about buffer_tokens + one shard
        whatever the store's size. One pass = one epoch over the split.
        """
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        gen = torch.Generator().manual_seed(seed)
        pool: list[Tensor] = []
        held = 0
        rows = self.rows(site, split, rank, world_size, shuffle, seed, max_norm)
        for acts, _ in rows:
            pool.append(acts)
            held += acts.shape[0]
            if held >= buffer_tokens:
                rest = yield from self._emit(torch.cat(pool), batch_size, shuffle, gen, dtype)
                pool, held = [rest], rest.shape[0]
        if held:
            rest = yield from self._emit(torch.cat(pool), batch_size, shuffle, gen, dtype)
            if rest.shape[0] and not drop_last:
                yield rest.to(dtype)

    @staticmethod
    def _emit(
        pool: Tensor, batch_size: int, shuffle: bool, gen: torch.Generator, dtype: torch.dtype
    ) -> Generator[Tensor, None, Tensor]:
        """Yield full batches from the pool (permuted if shuffling); return the remainder."""
        if shuffle:
            pool = pool[torch.randperm(pool.shape[0], generator=gen)]
        full = pool.shape[0] - pool.shape[0] % batch_size
        for start in range(0, full, batch_size):
            yield pool[start : start + batch_size].to(dtype)
        return pool[full:]
