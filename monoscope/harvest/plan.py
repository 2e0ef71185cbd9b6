"""Where each shard of a store begins and ends, known before any forward pass.

A shard is whole forward batches of `per_batch` contexts: the fewest batches that hold
`shard_tokens` rows; only the last shard is cut short, at `tokens`. So shard i's contexts and
rows follow from the config alone, and any process can harvest any shard and write the bytes a
single process would have written there (the same contexts in the same batches).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from monoscope.harvest.config import HarvestConfig


@dataclass(frozen=True)
class PlannedShard:
    index: int
    """Position in the store's shard list (its file is shard_name(index))."""
    first_context: int
    """Global id of its first context."""
    contexts: int
    """Contexts it may read from the corpus: whole batches (the last shard uses fewer)."""
    rows: int
    """Rows it stores."""


def rows_per_context(cfg: HarvestConfig) -> int:
    """Rows stored per context: every position but BOS's, unless include_bos."""
    return cfg.context if cfg.include_bos else cfg.context - 1


def contexts_per_batch(cfg: HarvestConfig) -> int:
    """Contexts per forward pass: batch_tokens rounded down to whole contexts, at least one."""
    return max(1, cfg.batch_tokens // cfg.context)


def plan_shards(cfg: HarvestConfig, manifest: dict[str, Any]) -> list[PlannedShard]:
    """The shards still to write after those `manifest` lists, in store order."""
    per_batch = contexts_per_batch(cfg)
    batch_rows = per_batch * rows_per_context(cfg)
    contexts = -(-cfg.shard_tokens // batch_rows) * per_batch
    full_rows = contexts * rows_per_context(cfg)
    first_index, first_context = len(manifest["shards"]), manifest["contexts"]
    left = cfg.tokens - manifest["tokens"]
    shards: list[PlannedShard] = []
    while left > 0:
        j = len(shards)
        shards.append(
            PlannedShard(
                first_index + j, first_context + j * contexts, contexts, min(left, full_rows)
            )
        )
        left -= full_rows
    return shards
