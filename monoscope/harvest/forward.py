"""The rows of one planned shard: its contexts read from the corpus stream, run through the
model in the batches the plan says, and flattened to one row per stored token."""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

import torch
from tqdm import tqdm

from monoscope.data import Context, CorpusSpec, iter_contexts
from monoscope.harvest.config import HarvestConfig
from monoscope.harvest.plan import PlannedShard, contexts_per_batch, rows_per_context
from monoscope.harvest.writer import ShardWriter
from monoscope.models import LanguageModel
from monoscope.runtime import parse_dtype


@dataclass
class MadeShard:
    """A shard's tensors (shards.py lists the keys), ready for the writer."""

    plan: PlannedShard
    tensors: dict[str, torch.Tensor]
    n_contexts: int
    norm_sums: dict[str, float]
    """Per site: the float64 sum of the rows' norms (the manifest's mean_norm is built from it)."""


class ShardMaker:
    """Makes planned shards in increasing order from one pass over the corpus stream; a
    process skips (tokenises but does not run) the contexts of shards it does not make."""

    def __init__(
        self, cfg: HarvestConfig, lm: LanguageModel, spec: CorpusSpec, start_context: int
    ) -> None:
        self.cfg, self.lm = cfg, lm
        self._contexts = itertools.islice(
            iter_contexts(spec, lm.tokenizer, cfg.context), start_context, None
        )
        self._next = start_context  # id of the next context the stream yields
        self._store_dtype = parse_dtype(cfg.dtype)
        self._first = 0 if cfg.include_bos else 1

    def make(self, shard: PlannedShard, bar: tqdm) -> MadeShard | None:
        """The shard's rows; None if the corpus ends before they are all there."""
        if shard.first_context < self._next:
            raise ValueError(f"shard {shard.index} asked for after a later one")
        deque(itertools.islice(self._contexts, shard.first_context - self._next), maxlen=0)
        self._next = shard.first_context
        parts: list[dict[str, torch.Tensor]] = []
        held = 0
        for batch in self._batches(itertools.islice(self._contexts, shard.contexts)):
            ids = torch.tensor([c.tokens for c in batch])  # [B, T]
            acts = self.lm.capture(ids, self.cfg.sites)  # {site: [B, T, d]}
            rows = self._rows(batch, ids, acts, self._next)
            self._next += len(batch)
            n = min(rows["token_ids"].shape[0], shard.rows - held)
            parts.append({k: v[:n] for k, v in rows.items()})
            held += n
            bar.update(n)
            if held == shard.rows:
                return self._join(shard, parts)
        return None

    def _batches(self, contexts: Iterator[Context]) -> Iterator[list[Context]]:
        size = contexts_per_batch(self.cfg)
        while batch := list(itertools.islice(contexts, size)):
            yield batch

    def _rows(
        self,
        batch: list[Context],
        ids: torch.Tensor,
        acts: dict[str, torch.Tensor],
        first_context: int,
    ) -> dict[str, torch.Tensor]:
        """Flatten a batch to one row per stored token (positions first..T-1 of each context)."""
        b, t = ids.shape
        first = self._first
        out: dict[str, torch.Tensor] = {
            "token_ids": ids[:, first:].reshape(-1).to(torch.int32),
            "context_index": (torch.arange(b) + first_context)[:, None]
            .expand(b, t - first)
            .reshape(-1),
            "position": torch.arange(first, t, dtype=torch.int32).repeat(b),
            "doc_index": torch.tensor([c.doc_ids[first:] for c in batch]).reshape(-1),
        }
        for site, a in acts.items():
            flat = a[:, first:].reshape(b * (t - first), -1).cpu()  # [B*(T-first), d]
            out[f"norms.{site}"] = flat.float().norm(dim=-1)
            out[f"acts.{site}"] = flat.to(self._store_dtype)
        return out

    def _join(self, shard: PlannedShard, parts: list[dict[str, torch.Tensor]]) -> MadeShard:
        tensors = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        norm_sums = {s: float(tensors[f"norms.{s}"].double().sum()) for s in self.cfg.sites}
        n_contexts = -(-shard.rows // rows_per_context(self.cfg))
        return MadeShard(shard, tensors, n_contexts, norm_sums)


def fill(
    maker: ShardMaker,
    shards: list[PlannedShard],
    record: Callable[[MadeShard], None],
    bar: tqdm,
) -> None:
    """Make `shards` in order, each handed to `record` on the writer thread while the next one's
    forward passes run; stop early if the corpus runs out (the caller's manifest check says so)."""
    writer = ShardWriter()
    try:
        for shard in shards:
            made = maker.make(shard, bar)
            if made is None:
                return
            writer.submit(partial(record, made))
    finally:
        bar.close()
        writer.close()


def progress_bar(shown: bool, total: int, initial: int, desc: str) -> tqdm:
    return tqdm(
        total=total,
        initial=initial,
        unit="tok",
        unit_scale=True,
        disable=not shown,
        desc=desc,
        smoothing=0.1,
    )
