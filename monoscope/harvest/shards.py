"""One shard file: a safetensors blob of per-token rows, checksummed, written atomically.

Keys in a shard (n rows, one per stored token):
  acts.<site>    [n, d]  activations in the store's dtype
  norms.<site>   [n]     float32 L2 norm of each activation (computed before any dtype cast)
  token_ids      [n]     int32 token at that position
  context_index  [n]     int64 which packed context the token belongs to (global, 0-based)
  position       [n]     int32 position of the token inside its context (BOS is position 0)
  doc_index      [n]     int64 which corpus document the token came from
"""

from __future__ import annotations

import errno
from pathlib import Path

from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes
from torch import Tensor

from monoscope.artifacts import atomic_write_bytes, sha256_bytes, sha256_file

INDEX_KEYS = ("token_ids", "context_index", "position", "doc_index")


class CorruptShardError(RuntimeError):
    """A shard whose bytes do not match the checksum recorded in the manifest."""


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def write_shard(path: Path, tensors: dict[str, Tensor]) -> dict:
    """Serialise, checksum and atomically write one shard; returns its manifest entry."""
    data = save_bytes({k: v.contiguous() for k, v in tensors.items()})
    try:
        atomic_write_bytes(path, data)
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise OSError(
                err.errno,
                f"disk full while writing {path.name} ({len(data) / 2**20:.1f} MiB); nothing "
                "half-written was kept: free space and rerun the same command to resume",
            ) from err
        raise
    return {
        "file": path.name,
        "tokens": int(tensors["token_ids"].shape[0]),
        "bytes": len(data),
        "sha256": sha256_bytes(data),
    }


def read_shard(path: Path, entry: dict, verify: bool = True) -> dict[str, Tensor]:
    """Read one shard; with verify, a wrong size or checksum raises CorruptShardError."""
    if not path.exists():
        raise CorruptShardError(f"shard {path} is listed in the manifest but missing")
    data = path.read_bytes()
    if verify and len(data) != entry["bytes"]:
        raise CorruptShardError(
            f"shard {path} is truncated or padded: "
            f"{len(data)} bytes, the manifest says {entry['bytes']}"
        )
    if verify and sha256_bytes(data) != entry["sha256"]:
        raise CorruptShardError(f"shard {path} is corrupt: its sha256 does not match the manifest")
    try:
        return load_bytes(data)
    except Exception as err:  # safetensors raises its own error types for malformed headers
        raise CorruptShardError(f"shard {path} cannot be parsed: {err}") from err


def check_shard_file(path: Path, entry: dict, checksum: bool = False) -> None:
    """The shard at `path` is there with the size its manifest `entry` records (and, with
    `checksum`, its sha256: a read of the whole file); CorruptShardError naming it if not."""
    redo = "restore it, or rerun the harvest with --overwrite to harvest the store again"
    if not path.is_file():
        raise CorruptShardError(f"shard {path} is listed in the manifest but missing: {redo}")
    size = path.stat().st_size
    if size != entry["bytes"]:
        raise CorruptShardError(
            f"shard {path} is truncated or padded: {size:,} bytes, the manifest says "
            f"{entry['bytes']:,}: {redo}"
        )
    if checksum and sha256_file(path) != entry["sha256"]:
        raise CorruptShardError(
            f"shard {path} is corrupt: its sha256 does not match the manifest: {redo}"
        )
