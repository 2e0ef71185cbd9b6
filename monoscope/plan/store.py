"""The activation store's size on disk: what `monoscope harvest` writes for a run's tokens.

A shard holds, per token: the activation in the store's dtype, its float32 norm, and the index
columns (token id int32, context index int64, position int32, document index int64:
monoscope/harvest/shards.py); per shard a safetensors header, and a manifest entry.
"""

from __future__ import annotations

from monoscope.harvest.config import HarvestConfig
from monoscope.runtime import parse_dtype

NORM_BYTES = 4
INDEX_BYTES = 4 + 8 + 4 + 8
SHARD_OVERHEAD = 1024
"""A shard's safetensors header (~0.5 KiB) and its manifest entry (~0.3 KiB), rounded up."""


def row_bytes(d: int, dtype: str, n_sites: int = 1) -> int:
    """Bytes a stored token takes in a shard (its activations, norms and index columns)."""
    return n_sites * (d * parse_dtype(dtype).itemsize + NORM_BYTES) + INDEX_BYTES


def store_bytes(
    tokens: int, d: int, dtype: str, shard_tokens: int = HarvestConfig.shard_tokens
) -> tuple[int, int]:
    """(bytes of the tokens' rows, bytes of the shards' headers and manifest entries)."""
    shards = -(-tokens // shard_tokens)
    return tokens * row_bytes(d, dtype), shards * SHARD_OVERHEAD
