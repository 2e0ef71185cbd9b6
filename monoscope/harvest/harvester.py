"""`harvest`: model + corpus -> activation store, resumable, with the forward pass stopped early."""

from __future__ import annotations

import itertools
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from monoscope.artifacts import (
    STORE_FORMAT_VERSION,
    CorruptFileError,
    read_sealed_json,
    write_sealed_json,
)
from monoscope.data import Context, CorpusSpec, iter_contexts
from monoscope.harvest.config import HarvestConfig
from monoscope.harvest.shards import check_shard_file
from monoscope.harvest.store import MANIFEST, ActivationStore, StoreError
from monoscope.harvest.writer import ShardWriter
from monoscope.models import LanguageModel, load_model
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


def _identity(manifest: dict[str, Any]) -> dict[str, Any]:
    """What a rerun must agree on to continue a store (not its progress or statistics)."""
    sites = {site: info["d"] for site, info in manifest["sites"].items()}
    return {"sites": sites, **{k: manifest.get(k) for k in _IDENTITY_KEYS}}


def _corpus_spec(cfg: HarvestConfig) -> CorpusSpec:
    return CorpusSpec(cfg.corpus, cfg.text_field, cfg.corpus_config, cfg.corpus_split, cfg.seed)


def _new_manifest(cfg: HarvestConfig, lm: LanguageModel, spec: CorpusSpec) -> dict[str, Any]:
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


def _open_folder(
    out: Path, fresh: dict[str, Any], overwrite: bool, checksums: bool
) -> dict[str, Any]:
    """Return the manifest to continue from: `fresh` for a new store, or the existing one,
    its shards checked (sizes; sha256 with `checksums`)."""
    manifest_path = out / MANIFEST
    if manifest_path.exists() and overwrite:
        shutil.rmtree(out)
    elif manifest_path.exists():
        try:
            existing = read_sealed_json(manifest_path)
        except CorruptFileError as err:
            raise StoreError(f"{err}: restore it, or pass --overwrite to harvest again") from err
        had, asked = _identity(existing), _identity(fresh)
        differ = [k for k in had if had[k] != asked[k]]
        if differ:
            details = "; ".join(f"{k}: store has {had[k]!r}, asked {asked[k]!r}" for k in differ)
            raise StoreError(
                f"{out} holds a different activation store ({details}). "
                "Pass --overwrite to replace it, or choose another --out."
            )
        _remove_unrecorded_files(out, existing)
        for entry in existing["shards"]:
            check_shard_file(out / entry["file"], entry, checksums)
        return existing
    elif out.exists() and any(out.iterdir()):
        raise StoreError(f"{out} exists and is not an activation store; refusing to write into it")
    out.mkdir(parents=True, exist_ok=True)
    write_sealed_json(manifest_path, fresh)
    return fresh


def _remove_unrecorded_files(out: Path, manifest: dict[str, Any]) -> None:
    """Drop temp files and shards a crash left behind before the manifest recorded them."""
    recorded = {s["file"] for s in manifest["shards"]}
    for f in out.iterdir():
        if f.name.endswith(".tmp") or (f.name.startswith("shard-") and f.name not in recorded):
            f.unlink()


def _batches(contexts: Iterator[Context], size: int) -> Iterator[list[Context]]:
    while batch := list(itertools.islice(contexts, size)):
        yield batch


def run(cfg: HarvestConfig, lm: LanguageModel | None = None) -> ActivationStore:
    """Harvest activations as `cfg` says; resume an incomplete store at cfg.out."""
    lm = lm or load_model(cfg.model, dtype=cfg.model_dtype)
    spec, out, manifest = _open_store(cfg, lm)
    if manifest["complete"]:
        checked = "sizes and sha256" if cfg.verify else "sizes; --verify checks sha256 too"
        print(
            f"store {out} is already complete ({manifest['tokens']:,} tokens, "
            f"{len(manifest['shards'])} shards checked: {checked})",
            file=sys.stderr,
        )
        return ActivationStore(out)
    start = time.perf_counter()
    _fill(cfg, lm, spec, out, manifest)
    _finish(cfg, out, manifest, time.perf_counter() - start)
    return ActivationStore(out)


def _open_store(cfg: HarvestConfig, lm: LanguageModel) -> tuple[CorpusSpec, Path, dict[str, Any]]:
    """Check the sites and the corpus before any file is written, then open cfg.out:
    (corpus spec, store folder, the manifest to continue from)."""
    for site in cfg.sites:
        lm.site(site)  # unknown sites fail here
    spec = _corpus_spec(cfg)
    spec.validate()
    out = Path(cfg.out)
    return spec, out, _open_folder(out, _new_manifest(cfg, lm, spec), cfg.overwrite, cfg.verify)


def _fill(
    cfg: HarvestConfig, lm: LanguageModel, spec: CorpusSpec, out: Path, manifest: dict[str, Any]
) -> None:
    """Run the model on the contexts after the last one stored, writing a shard each time
    cfg.shard_tokens rows are pending, until cfg.tokens are stored or the corpus ends. The
    writer records every shard in `manifest`."""
    store_dtype = parse_dtype(cfg.dtype)
    first = 0 if cfg.include_bos else 1
    per_batch = max(1, cfg.batch_tokens // cfg.context)
    contexts = itertools.islice(
        iter_contexts(spec, lm.tokenizer, cfg.context), manifest["contexts"], None
    )
    writer = ShardWriter(out, manifest)
    pending: list[dict[str, torch.Tensor]] = []
    pending_rows = pending_contexts = 0
    done = manifest["tokens"]
    bar = tqdm(
        total=cfg.tokens,
        initial=done,
        unit="tok",
        unit_scale=True,
        disable=not cfg.progress,
        desc="harvest",
        smoothing=0.1,
    )
    next_context = manifest["contexts"]
    try:
        for batch in _batches(contexts, per_batch):
            ids = torch.tensor([c.tokens for c in batch])  # [B, T]
            acts = lm.capture(ids, cfg.sites)  # {site: [B, T, d]}
            rows = _rows(batch, ids, acts, first, next_context, store_dtype)
            n = min(rows["token_ids"].shape[0], cfg.tokens - done - pending_rows)
            pending.append({k: v[:n] for k, v in rows.items()})
            pending_rows += n
            pending_contexts += -(-n // (cfg.context - first))  # contexts the n rows came from
            next_context += len(batch)
            bar.update(n)
            finished = done + pending_rows >= cfg.tokens
            if pending_rows >= cfg.shard_tokens or finished:
                _submit(writer, pending, pending_contexts, cfg.sites)
                done += pending_rows
                pending, pending_rows, pending_contexts = [], 0, 0
            if finished:
                break
    finally:
        bar.close()
        writer.close()


def _finish(cfg: HarvestConfig, out: Path, manifest: dict[str, Any], seconds: float) -> None:
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


def _rows(
    batch: list[Context],
    ids: torch.Tensor,
    acts: dict[str, torch.Tensor],
    first: int,
    first_context: int,
    store_dtype: torch.dtype,
) -> dict[str, torch.Tensor]:
    """Flatten a batch to one row per stored token (positions first..T-1 of each context)."""
    b, t = ids.shape
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
        out[f"acts.{site}"] = flat.to(store_dtype)
    return out


def _submit(
    writer: ShardWriter, pending: list[dict[str, Any]], n_contexts: int, sites: Sequence[str]
) -> None:
    tensors = {k: torch.cat([p[k] for p in pending]) for k in pending[0]}
    norm_sums = {s: float(tensors[f"norms.{s}"].double().sum()) for s in sites}
    writer.submit(tensors, n_contexts, norm_sums)


def harvest(
    model: str | LanguageModel,
    corpus: str | CorpusSpec = "builtin",
    sites: Sequence[str] = ("blocks.15.hook_resid_post",),
    tokens: int = 1_000_000,
    out: str | Path = "runs/demo/acts",
    **options: Any,
) -> ActivationStore:
    """Python entry point: `harvest(lm, "builtin", ["blocks.15.hook_resid_post"], 10**6, "acts")`.

    `options` are the other HarvestConfig fields (dtype, context, batch_tokens, ...).
    """
    if isinstance(corpus, CorpusSpec):
        options = {
            "text_field": corpus.text_field,
            "corpus_config": corpus.hf_config,
            "corpus_split": corpus.split,
            "seed": corpus.seed,
            **options,
        }
        corpus = corpus.source
    lm = model if isinstance(model, LanguageModel) else None
    name = model.name if isinstance(model, LanguageModel) else model
    cfg = HarvestConfig(
        model=name, sites=list(sites), corpus=corpus, tokens=tokens, out=str(out), **options
    )
    return run(cfg, lm)
