"""Which run a feature store belongs to, and opening one for writing: a store of another SAE,
activation store or parameters is refused (unless overwritten), a finished one is reused, an
unfinished one of the same run is continued."""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import sqlite3
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

from safetensors.torch import save as save_bytes
from torch import nn

from monoscope.analyze import schema
from monoscope.analyze.checkpoint import checkpoint_path, same_run
from monoscope.analyze.config import AnalyzeConfig
from monoscope.artifacts import sha256_file
from monoscope.harvest import ActivationStore
from monoscope.harvest.store import MANIFEST
from monoscope.sae import SparseAutoencoder


def _sae_sha256(sae: nn.Module) -> str:
    """sha256 of the weights as `sae.save` writes them (= weights.safetensors' for a folder
    monoscope saved)."""
    weights = {k: v.detach().cpu().contiguous() for k, v in sae.state_dict().items()}
    return hashlib.sha256(save_bytes(weights)).hexdigest()


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
        "params": cfg.params(),
    }


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
