"""Vectorised selection primitives: the first m entries of every group, and hash keys.

Random samples are drawn by priority keys: each candidate gets a pseudo-random key that depends
only on what it is (the token, the feature, the seed), and a sample of m is the m smallest keys.
That is a uniform sample without replacement, it merges exactly (the m smallest of a union are
the m smallest of the parts' m smallest), and it does not depend on how the stream was cut into
batches, so a resumed run draws the same samples as an uninterrupted one.
"""

from __future__ import annotations

import torch
from torch import Tensor

_MASK32 = 0xFFFFFFFF
KEY_EMPTY = 1 << 32
"""Key of an empty sample slot: larger than any hash key (those are below 2**32)."""


def _fmix32(h: Tensor) -> Tensor:
    """MurmurHash3's 32-bit finaliser on int64 values in [0, 2**32). Products may wrap past
    2**63; the low 32 bits, all that is kept, are still right."""
    h = h ^ (h >> 16)
    h = (h * 0x85EBCA6B) & _MASK32
    h = h ^ (h >> 13)
    h = (h * 0xC2B2AE35) & _MASK32
    return h ^ (h >> 16)


def hash_keys(*parts: Tensor, seed: int) -> Tensor:
    """Pseudo-random int64 keys in [0, 2**32) of int64 tensors of one shape, element-wise."""
    h = torch.full_like(parts[0], seed & _MASK32)
    for p in parts:
        h = _fmix32(h ^ (p & _MASK32))
        h = _fmix32(h ^ ((p >> 32) & _MASK32))
    return h


def top_per_group(groups: Tensor, keys: Tensor, m: int) -> tuple[Tensor, Tensor]:
    """The entries among the m smallest keys of their group (ties: input order first).

    groups [n] int64 in [0, 2**31), keys [n] int64 in [0, 2**32) -> (positions [r] into the
    input, their rank [r] in the group, 0 = first). One stable sort of group << 32 | key.
    """
    order = torch.sort(groups << 32 | keys, stable=True).indices
    _, counts = torch.unique_consecutive(groups[order], return_counts=True)
    first = (counts.cumsum(0) - counts).repeat_interleave(counts)
    rank = torch.arange(order.numel()) - first
    keep = rank < m
    return order[keep], rank[keep]
