"""Which run a feature store belongs to, and opening one for writing: a store of another SAE,
activation store or parameters is refused (unless overwritten), a finished one is reused, an
unfinished one of the same run is continued."""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import sqlite3
import struct
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as save_bytes
from torch import Tensor, nn

from monoscope.analyze import schema
from monoscope.analyze.checkpoint import checkpoint_path, same_run
from monoscope.analyze.config import AnalyzeConfig
from monoscope.analyze.neighbours import exact_limit
from monoscope.artifacts import sha256_file
from monoscope.harvest import ActivationStore
from monoscope.harvest.store import MANIFEST
from monoscope.sae import SparseAutoencoder

HASH_BYTES = 1 << 26
"""Bytes of a tensor hashed at a time (a non-contiguous one is copied this much at a time)."""


def _sae_sha256(sae: nn.Module) -> str:
    """sha256 of the weights as `sae.save` writes them (= weights.safetensors' for a folder
    monoscope saved), hashed tensor by tensor: the file's bytes are never built in memory
    (they would double the memory of a 1M-feature SAE)."""
    weights = {k: v.detach() for k, v in sae.state_dict().items()}
    digest = hashlib.sha256(safetensors_header(weights))
    for name, _ in _file_order(weights):
        _hash_tensor(digest, weights[name])
    return digest.hexdigest()


def _hash_tensor(digest: Any, t: Tensor) -> None:
    """Add t's data as safetensors stores it (row-major) to `digest`, about HASH_BYTES at a
    time (a chunk is copied only when t is not contiguous or not on the CPU)."""
    t = t.reshape(1) if t.dim() == 0 else t
    row_bytes = max(1, t[0].numel() * t.element_size()) if t.shape[0] else 1
    rows = max(1, HASH_BYTES // row_bytes)
    for start in range(0, t.shape[0], rows):
        part = t[start : start + rows].contiguous().cpu()
        digest.update(part.reshape(-1).view(torch.uint8).numpy())


def _file_order(weights: dict[str, Tensor]) -> list[tuple[str, str]]:
    """(name, safetensors dtype) in the order safetensors lays the tensors out, read from the
    header it writes for one-element stand-ins (the order depends on names and dtypes only)."""
    proxy = save_bytes({k: torch.zeros(1, dtype=v.dtype) for k, v in weights.items()})
    (size,) = struct.unpack("<Q", proxy[:8])
    header = json.loads(proxy[8 : 8 + size])
    return [(name, header[name]["dtype"]) for name in header if name != "__metadata__"]


def safetensors_header(weights: dict[str, Tensor]) -> bytes:
    """The first bytes of `safetensors.torch.save(weights)`: the header's length (8 bytes,
    little-endian) and the header, compact JSON padded with spaces to a multiple of 8."""
    entries, offset = {}, 0
    for name, dtype in _file_order(weights):
        t = weights[name]
        size = t.numel() * t.element_size()
        entries[name] = {
            "dtype": dtype,
            "shape": list(t.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    text = json.dumps(entries, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def identity(cfg: AnalyzeConfig, sae: SparseAutoencoder, store: ActivationStore, site: str) -> dict:
    c = sae.cfg
    return {
        "sae": {
            "path": cfg.sae,
            "sha256": _sae_sha256(sae),
            "arch": getattr(c, "arch", type(sae).__name__),
            "n_features": c.n_features,
            "d_in": c.d_in,
            "site": site,
            "model": getattr(c, "model", None),
            "activation_convention": getattr(c, "activation_convention", None),
        },
        "acts": {
            "path": str(store.path),
            "manifest_sha256": sha256_file(store.path / MANIFEST),
            "site": site,
            "split": cfg.split,
        },
        "params": cfg.params() | _resolved_limits(cfg, sae),
    }


def _resolved_limits(cfg: AnalyzeConfig, sae: SparseAutoencoder) -> dict[str, Any]:
    """The defaults that depend on where the SAE is, as the numbers they stand for there: a
    store records what its run did (and matches an earlier version's stores)."""
    if cfg.exact_neighbours is not None:
        return {}
    return {"exact_neighbours": exact_limit(sae.W_dec.device)}


def existing_is_complete(out: Path, identity: dict, overwrite: bool) -> bool:
    """Whether `out` already holds this run's complete store. A store of another SAE, store or
    parameters (or any other file) is refused unless `overwrite`, which deletes it."""
    if overwrite:
        for path in (out, schema.journal_path(out), checkpoint_path(out)):
            path.unlink(missing_ok=True)
    if not out.exists():
        return False
    try:
        conn = schema.open_readonly(out)
        try:
            meta = schema.read_meta(conn)
        finally:
            conn.close()
    except schema.UnfinishedWriteError:
        raise  # the store is intact: --overwrite is not the answer
    except schema.FeatureStoreError as err:
        raise schema.FeatureStoreError(
            f"{out} exists and is not a feature store this monoscope writes ({err}); pass "
            "--overwrite to replace it, or choose another --out"
        ) from None
    if "params" not in meta:  # created, then killed before its identity was recorded
        return False
    had = same_run({"sae": meta["sae"], "acts": meta["acts"], "params": meta["params"]})
    asked = same_run(identity)
    differ = [k for k in sorted(set(had) | set(asked)) if had.get(k) != asked.get(k)]
    if differ:
        details = "; ".join(f"{k}: {had.get(k)!r} there, {asked.get(k)!r} asked" for k in differ)
        raise schema.FeatureStoreError(
            f"{out} holds the features of another run ({details}). Pass --overwrite to "
            "replace it, or choose another --out."
        )
    return bool(meta.get("complete"))


def create_store(out: Path, identity: dict) -> sqlite3.Connection:
    """A writable connection to the (new or resumed) store, its identity recorded."""
    conn = schema.create(out)
    with conn:
        schema.write_meta(
            conn,
            complete=False,
            sae=identity["sae"],
            acts=identity["acts"],
            params=identity["params"],
            created_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            monoscope_version=version("monoscope"),
        )
    return conn


@contextlib.contextmanager
def store_for_writing(out: Path, identity: dict) -> Iterator[sqlite3.Connection]:
    """`create_store`'s connection, closed on exit. Should the run fail before its first
    progress checkpoint, a store it created is removed again: it holds no features and nothing
    to resume from (a store that existed before the run is always kept)."""
    fresh = not out.exists()
    conn = None
    try:
        conn = create_store(out, identity)
        yield conn
    except BaseException:
        if conn is not None:
            conn.close()  # rolls back what the run left uncommitted
        if fresh and not checkpoint_path(out).exists():
            for path in (out, schema.journal_path(out)):
                path.unlink(missing_ok=True)
        raise
    finally:
        if conn is not None:
            conn.close()
