"""An activation store's manifest: what a harvest writes first, what a rerun must agree on to
resume a store, and the last write that marks it complete."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

from monoscope.artifacts import (
    STORE_FORMAT_VERSION,
    CorruptFileError,
    read_sealed_json,
    write_sealed_json,
)
from monoscope.data import CorpusSpec
from monoscope.harvest.config import HarvestConfig
from monoscope.harvest.shards import check_shard_file
from monoscope.harvest.store import MANIFEST, StoreError
from monoscope.models import LanguageModel
from monoscope.runtime import dtype_name, parse_dtype

# Manifest keys that must match for a rerun to resume an existing store.
_IDENTITY_KEYS = (
    "model",
    "dtype",
    "context",
    "corpus",
    "include_bos",
    "target_tokens",
    "heldout_fraction",
    "shard_tokens",
)


def identity(manifest: dict[str, Any]) -> dict[str, Any]:
    """What a rerun must agree on to continue a store (not its progress or statistics)."""
    sites = {site: info["d"] for site, info in manifest["sites"].items()}
    return {"sites": sites, **{k: manifest.get(k) for k in _IDENTITY_KEYS}}


def corpus_spec(cfg: HarvestConfig) -> CorpusSpec:
    return CorpusSpec(cfg.corpus, cfg.text_field, cfg.corpus_config, cfg.corpus_split, cfg.seed)


def new_manifest(cfg: HarvestConfig, lm: LanguageModel, spec: CorpusSpec) -> dict[str, Any]:
    return {
        "format": "monoscope.activation_store",
        "version": STORE_FORMAT_VERSION,
        "model": {
            "name": lm.name,
            "revision": lm.revision,
            "architecture": type(lm.model).__name__,
            "compute_dtype": dtype_name(lm.dtype),
        },
        "sites": {s: {"d": lm.site(s).width, "mean_norm": None} for s in cfg.sites},
        "dtype": dtype_name(parse_dtype(cfg.dtype)),
        "context": cfg.context,
        "corpus": spec.to_json(),
        "bos_token_id": _bos_id(lm),
        "include_bos": cfg.include_bos,
        "target_tokens": cfg.tokens,
        "heldout_fraction": cfg.heldout_fraction,
        "shard_tokens": cfg.shard_tokens,
        "tokens": 0,
        "contexts": 0,
        "complete": False,
        "shards": [],
    }


def _bos_id(lm: LanguageModel) -> int | None:
    bos: int | None = lm.tokenizer.bos_token_id
    eos: int | None = lm.tokenizer.eos_token_id
    return bos if bos is not None else eos


def open_folder(
    out: Path, fresh: dict[str, Any], overwrite: bool, checksums: bool
) -> dict[str, Any]:
    """Return the manifest to continue from: `fresh` for a new store, or the existing one,
    its shards checked (sizes; sha256 with `checksums`). Files it does not list are left for
    records.settle_entries."""
    manifest_path = out / MANIFEST
    if manifest_path.exists() and overwrite:
        shutil.rmtree(out)
    elif manifest_path.exists():
        try:
            existing = read_sealed_json(manifest_path)
        except CorruptFileError as err:
            raise StoreError(f"{err}: restore it, or pass --overwrite to harvest again") from err
        had, asked = identity(existing), identity(fresh)
        differ = [k for k in had if had[k] != asked[k]]
        if differ:
            details = "; ".join(f"{k}: store has {had[k]!r}, asked {asked[k]!r}" for k in differ)
            raise StoreError(
                f"{out} holds a different activation store ({details}). "
                "Pass --overwrite to replace it, or choose another --out."
            )
        for entry in existing["shards"]:
            check_shard_file(out / entry["file"], entry, checksums)
        return existing
    elif out.exists() and any(out.iterdir()):
        raise StoreError(f"{out} exists and is not an activation store; refusing to write into it")
    out.mkdir(parents=True, exist_ok=True)
    write_sealed_json(manifest_path, fresh)
    return fresh


def finish(cfg: HarvestConfig, out: Path, manifest: dict[str, Any], seconds: float) -> None:
    """Mark the store complete, or refuse if the corpus ran out first (the partial store kept)."""
    if manifest["tokens"] < cfg.tokens:
        raise StoreError(
            f"the corpus ran out after {manifest['tokens']:,} of {cfg.tokens:,} tokens "
            f"({manifest['contexts']:,} contexts of {cfg.context}); the partial store is kept at "
            f"{out}: ask for fewer --tokens, a shorter --context, or use a larger corpus"
        )
    manifest["complete"] = True
    manifest["seconds"] = round(seconds, 3)
    write_sealed_json(out / MANIFEST, manifest)


def check_inputs(cfg: HarvestConfig, lm: LanguageModel) -> tuple[CorpusSpec, Path, dict[str, Any]]:
    """Check the sites and the corpus, touching no file: (corpus spec, store folder, the
    manifest a new store starts with)."""
    for site in cfg.sites:
        lm.site(site)  # unknown sites fail here
    spec = corpus_spec(cfg)
    spec.validate()
    return spec, Path(cfg.out), new_manifest(cfg, lm, spec)


def open_store(cfg: HarvestConfig, lm: LanguageModel) -> tuple[CorpusSpec, Path, dict[str, Any]]:
    """Check the inputs before any file is written, then open cfg.out: (corpus spec, store
    folder, the manifest to continue from)."""
    spec, out, fresh = check_inputs(cfg, lm)
    return spec, out, open_folder(out, fresh, cfg.overwrite, cfg.verify)


def say_complete(cfg: HarvestConfig, out: Path, manifest: dict[str, Any]) -> None:
    checked = "sizes and sha256" if cfg.verify else "sizes; --verify checks sha256 too"
    print(
        f"store {out} is already complete ({manifest['tokens']:,} tokens, "
        f"{len(manifest['shards'])} shards checked: {checked})",
        file=sys.stderr,
    )
