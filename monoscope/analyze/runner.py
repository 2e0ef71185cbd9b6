"""`analyze`: one pass over an activation store with an SAE -> the feature store (schema.py).

Stages: open (lock, identity checks, resume) -> neighbours by decoder cosine (before the pass:
the pass counts their co-occurrence) -> the pass (encode each batch, update the Accumulator,
checkpoint every few batches) -> the examples -> logit effects, the map -> every table in one
transaction, the examples' windows read (from the pass's code cache, or re-read from the store
and re-encoded) while they are written.
"""

from __future__ import annotations

import contextlib
import sqlite3
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from monoscope.analyze import schema
from monoscope.analyze.accumulate import Accumulator
from monoscope.analyze.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from monoscope.analyze.codes import CodeCache
from monoscope.analyze.config import AnalyzeConfig
from monoscope.analyze.layout import NEIGHBOURS as MAP_NEIGHBOURS
from monoscope.analyze.layout import feature_map, require_umap
from monoscope.analyze.lock import writer_lock
from monoscope.analyze.logits import logit_effects, token_texts, vocab_size
from monoscope.analyze.neighbours import feature_neighbours
from monoscope.analyze.opening import existing_is_complete, identity, store_for_writing
from monoscope.analyze.tables import (
    Examples,
    LogitEffects,
    example_rows,
    export_parquet,
    feature_rows,
    neighbour_rows,
    require_pyarrow,
    write_tables,
)
from monoscope.analyze.windows import WindowReader, read_rows
from monoscope.artifacts import remove_write_debris
from monoscope.evaluate.evaluator import check_compatible
from monoscope.evaluate.metrics import density_histogram
from monoscope.folders import made_folder
from monoscope.harvest import ActivationStore, StoreError
from monoscope.models import LanguageModel, load_model
from monoscope.runtime import intra_op_threads, resolve_device

if TYPE_CHECKING:
    from monoscope.sae import SparseAutoencoder


ENCODE_ELEMENTS = 1 << 26
"""Most feature activations encoded at a time (256 MiB of float32): at 1M features a batch of
4096 rows would be 16 GiB, so big dictionaries encode fewer rows at a time."""


def encode_rows(batch_size: int, n_features: int) -> int:
    """Rows per SAE encode: batch_size, fewer where [rows, n_features] passes ENCODE_ELEMENTS."""
    return max(1, min(batch_size, ENCODE_ELEMENTS // n_features))


def encode(sae: SparseAutoencoder, x: Tensor) -> Tensor:
    """Feature activations [b, n_features] (reporting convention, float32, CPU) of raw x
    [b, d_in], computed on the SAE's device and dtype."""
    param = next(sae.parameters())
    with torch.no_grad():
        return sae.encode(x.to(device=param.device, dtype=param.dtype)).float().cpu()


def _model(
    cfg: AnalyzeConfig, store: ActivationStore, lm: LanguageModel | None, device: torch.device
) -> LanguageModel | None:
    """The model for logit effects and token texts (loaded on `device`), or None (with a
    warning) when --no-logits was asked and it cannot be loaded."""
    name = cfg.model or store.manifest["model"]["name"]
    if lm is None:
        try:
            lm = load_model(name, device=device)
        except (OSError, ValueError, RuntimeError) as err:
            if cfg.logits:
                raise ValueError(
                    f"logit effects need the model {name!r}, which could not be loaded ({err}); "
                    "pass --model, or --no-logits to analyse without it"
                ) from err
            print(
                f"monoscope analyze: warning: model {name!r} could not be loaded ({err}); "
                "the store gets no logit effects and no token texts",
                file=sys.stderr,
            )
            return None
    store.check_compatible(revision=lm.revision)
    return lm


def pass_batches(
    store: ActivationStore, site: str, cfg: AnalyzeConfig, skip: int
) -> Iterator[tuple[Tensor, Tensor]]:
    """(activations [b, d], locs [b]) in store order, batch_size rows at a time within each
    shard, from token `skip` of the split on (a batch boundary of an earlier run)."""
    context, seen = int(store.manifest["context"]), 0
    limit = cfg.max_tokens or store.n_tokens
    for acts, meta in store.rows(site, cfg.split):
        n = min(acts.shape[0], limit - seen)
        locs = meta["context_index"] * context + meta["position"].long()
        for start in range(0, n, cfg.batch_size):
            if seen + start >= skip:
                stop = min(start + cfg.batch_size, n)
                yield acts[start:stop].float(), locs[start:stop]
        seen += n
        if seen >= limit:
            return


@dataclass
class _Analysis:
    """One analysis run on an opened store (`conn`), from resume to the final transaction."""

    cfg: AnalyzeConfig
    sae: SparseAutoencoder
    store: ActivationStore
    site: str
    lm: LanguageModel | None
    out: Path
    identity: dict[str, Any]
    conn: sqlite3.Connection
    logit_directions: Tensor | None = None
    """[n_features, d_model] residual directions for the logit effects (default: W_dec)."""
    seconds: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.context = int(self.store.manifest["context"])
        self._write_start = 0.0
        self.threads = torch.get_num_threads()  # configure_threads' choice, for the encodes
        n = self.sae.cfg.n_features
        saved = load_checkpoint(self.out, self.identity)
        self.neighbours: tuple[Tensor, Tensor]  # (index, cosine) [n_features, k]
        with self._timed("neighbours"):
            if saved is not None:
                self.neighbours = saved.pop("neighbour_index"), saved.pop("neighbour_cosine")
            else:
                # The map's neighbours too, when it is drawn: the table keeps the first ones.
                k = max(self.cfg.neighbours, MAP_NEIGHBOURS - 1 if self.cfg.map else 0)
                index, cosine, search = feature_neighbours(
                    self.sae.W_dec, k, self.cfg.exact_neighbours, self.cfg.seed
                )
                self.neighbours = index, cosine
                with self.conn:
                    schema.write_meta(self.conn, neighbour_search=search)
        self.cache = CodeCache(n, self.cfg.cache_entries)
        self.acc = Accumulator.for_config(
            self.cfg, n, self.neighbours[0][:, : self.cfg.neighbours], self.cache
        )
        if saved is not None:
            self.cache.load_state({k: saved.pop(k) for k in list(saved) if k.startswith("cache_")})
            self.acc.load_state(saved)

    @contextlib.contextmanager
    def _timed(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.seconds[stage] = time.perf_counter() - start

    def run(self) -> None:
        with self._timed("pass"):
            self._pass()
        if self.acc.tokens_seen == 0:
            raise StoreError(
                f"the {self.cfg.split} split of store {self.store.path} has no tokens to analyse"
            )
        with self._timed("examples"):
            examples = self._examples()
        reader = WindowReader(
            self.store,
            self.site,
            self._encode_all_threads,
            self.cache,
            self.context,
            self.cfg.window_before,
            self.cfg.window_after,
            int(self.acc.state["last_loc"]),
            encode_rows(self.cfg.batch_size, self.sae.cfg.n_features),
        )
        directions = self.sae.W_dec.detach().cpu()  # the logit effects and the map: CPU
        with self._timed("logits"):
            logits = None
            if self.lm is not None and self.cfg.logits:
                towards = directions if self.logit_directions is None else self.logit_directions
                logits = LogitEffects(*logit_effects(towards, self.lm, self.cfg.logit_tokens))
            vocab = token_texts(self.lm.tokenizer, vocab_size(self.lm)) if self.lm else []
        with self._timed("map"):
            coords = None
            if self.cfg.map:
                index, cosine = (n[:, : MAP_NEIGHBOURS - 1] for n in self.neighbours)
                coords = feature_map(index, cosine, directions, self.cfg.map_epochs, self.cfg.seed)
        s, k = self.acc.state, self.cfg.neighbours
        index, cosine = (n[:, :k] for n in self.neighbours)
        self._write_start = time.perf_counter()
        write_tables(
            self.conn,
            feature_rows(
                s["n_fired"],
                self.acc.tokens_seen,
                s["act_sum"],
                s["act_max"],
                self.acc.hist(),
                logits,
                vocab,
                coords,
            ),
            # The windows are read while their rows are written.
            example_rows(examples, reader.read(examples.feature, examples.loc), self.context),
            neighbour_rows(index, cosine, s["cooccur"] if k else None, s["n_fired"]),
            vocab,
            self._final_meta,
        )

    def _encode_all_threads(self, x: Tensor) -> Tensor:
        with intra_op_threads(self.threads):
            return encode(self.sae, x)

    def _pass(self) -> None:
        cfg, acc = self.cfg, self.acc
        bar = tqdm(
            total=min(cfg.max_tokens or self.store.n_tokens, self.store.n_tokens)
            if cfg.split == "all"
            else None,
            initial=acc.tokens_seen,
            unit="tok",
            unit_scale=True,
            disable=not cfg.progress,
            desc="analyze",
        )
        try:
            batches = pass_batches(self.store, self.site, cfg, acc.tokens_seen)
            rows = encode_rows(cfg.batch_size, self.sae.cfg.n_features)
            for step, (x, locs) in enumerate(batches, 1):
                for part, part_locs in zip(x.split(rows), locs.split(rows), strict=True):
                    acc.update(encode(self.sae, part), part_locs)
                bar.update(x.shape[0])
                if step % cfg.checkpoint_every == 0:
                    self._checkpoint()
        finally:
            bar.close()

    def _checkpoint(self) -> None:
        self.acc.flush()
        state = {**self.acc.state, **self.cache.state()}
        state.update(neighbour_index=self.neighbours[0], neighbour_cosine=self.neighbours[1])
        save_checkpoint(self.out, state, self.identity)
        with self.conn:
            schema.write_meta(self.conn, tokens_seen=self.acc.tokens_seen)

    def _random_examples(self) -> tuple[Tensor, Tensor, Tensor]:
        """(feature, rank, loc) [e]: per firing feature, the first random_examples pool tokens
        (in sample order) on which it does not fire."""
        locs, n = self.acc.pool_locs(), self.cfg.random_examples
        if not n or not locs.numel():
            empty = torch.zeros(0, dtype=torch.int64)
            return empty, empty, empty
        x = read_rows(self.store, self.site, locs, self.context)
        fired = self.acc.state["n_fired"] > 0
        taken = torch.zeros(fired.numel(), dtype=torch.int64)  # silent pool tokens so far
        found: list[tuple[Tensor, Tensor, Tensor]] = []
        rows = encode_rows(self.cfg.batch_size, fired.numel())
        for start in range(0, locs.numel(), rows):
            silent = (encode(self.sae, x[start : start + rows]) == 0) & fired  # [r, F]
            rank = silent.cumsum(0) + (taken - 1)
            taken += silent.sum(0)
            token, feature = (silent & (rank < n)).nonzero(as_tuple=True)
            found.append((feature, rank[token, feature], locs[start + token]))
        feature, rank, loc = (torch.cat(part) for part in zip(*found, strict=True))
        return feature, rank, loc

    def _examples(self) -> Examples:
        top, quant = self.acc.top_examples(), self.acc.interval_examples()
        rand = self._random_examples()
        none = [torch.full_like(top[0], -1), torch.full_like(rand[0], -1)]
        # (feature, kind, bucket, rank, activation, loc) of each kind
        parts = [
            (top[0], 0, none[0], top[1], top[2], top[3]),
            (quant[0], 1, quant[1], quant[2], quant[3], quant[4]),
            (rand[0], 2, none[1], rand[1], torch.zeros(rand[0].numel()), rand[2]),
        ]
        return Examples(
            feature=torch.cat([p[0] for p in parts]),
            kind=torch.cat([torch.full_like(p[0], p[1]) for p in parts]),
            bucket=torch.cat([p[2] for p in parts]),
            rank=torch.cat([p[3] for p in parts]),
            activation=torch.cat([p[4].float() for p in parts]),
            loc=torch.cat([p[5] for p in parts]),
        )

    def _final_meta(self) -> dict[str, Any]:
        model, tokens = self.store.manifest["model"], self.acc.tokens_seen
        density = density_histogram(self.acc.state["n_fired"], tokens)
        return {
            "complete": True,
            "acts": {**self.identity["acts"], "n_tokens": tokens},
            "model": {"name": model["name"], "revision": model["revision"]},
            "tokens_seen": tokens,
            "hist_edges": (10 ** self.acc.log10_edges()).tolist(),
            "density_hist": {
                # float32 linspace edges (-3.9000000953674316) rounded back to their decimals
                "edges": [round(e, 6) for e in density["log10_edges"]],
                "counts": density["counts"],
                "dead": density["dead"],
            },
            "seconds": {
                **{k: round(v, 3) for k, v in self.seconds.items()},
                "windows_and_write": round(time.perf_counter() - self._write_start, 3),
            },
        }


def run(
    cfg: AnalyzeConfig,
    sae: SparseAutoencoder | None = None,
    store: ActivationStore | None = None,
    lm: LanguageModel | None = None,
    logit_directions: Tensor | None = None,
) -> Path:
    """Analyse as `cfg` says (objects given are used instead of loading cfg.sae, cfg.acts,
    cfg.model); resume an interrupted store at cfg.out; returns its path. `logit_directions`
    [n_features, d_model]: what each feature writes to the residual stream, for dictionaries
    whose decoder rows are not residual directions (MLP neurons); default W_dec."""
    device = resolve_device(cfg.device)  # a device that is not there fails before any load
    if cfg.map:
        require_umap()  # before the pass, not after it
    if cfg.export == "parquet":
        require_pyarrow()
    if sae is None:
        from monoscope.sae import load_sae

        sae = load_sae(cfg.sae, device=device)
    store = store if store is not None else ActivationStore(cfg.acts)
    site = check_compatible(sae, store, None)
    if cfg.split == "heldout" and store.heldout_fraction <= 0:
        raise StoreError(f"store {store.path} has no held-out split (heldout_fraction 0)")
    out = Path(cfg.out)
    # A run that fails early (a corrupt shard, a missing model) leaves no folder or empty store.
    with made_folder(out.parent), writer_lock(out):
        remove_write_debris(out.parent, out.name)  # of a run killed mid-write
        ident = identity(cfg, sae, store, site)
        if existing_is_complete(out, ident, cfg.overwrite):
            print(f"feature store {out} is already complete", file=sys.stderr)
        else:
            # Before anything is written: a missing model fails fast.
            lm = _model(cfg, store, lm, device)
            with store_for_writing(out, ident) as conn:
                _Analysis(cfg, sae, store, site, lm, out, ident, conn, logit_directions).run()
        checkpoint_path(out).unlink(missing_ok=True)  # also one a kill left after the commit
    if cfg.export == "parquet":
        export_parquet(out)
    return out


def analyze(
    sae: SparseAutoencoder | str | Path,
    acts: ActivationStore | str | Path,
    model: LanguageModel | str | None = None,
    out: str | Path = "features.db",
    **options: Any,
) -> Path:
    """Python entry point: `analyze(sae, store, model=lm, out="runs/a/features.db")`.

    `sae` and `acts` are objects or folders; `model` a LanguageModel, a name, or None for the
    store's model; `options` are the other AnalyzeConfig fields (top_n, window, map, ...).
    """
    store = acts if isinstance(acts, ActivationStore) else ActivationStore(acts)
    lm = model if isinstance(model, LanguageModel) else None
    cfg = AnalyzeConfig(
        sae="" if isinstance(sae, nn.Module) else str(sae),
        acts=str(store.path),
        out=str(out),
        model=model.name if isinstance(model, LanguageModel) else model,
        **options,
    )
    return run(cfg, sae if isinstance(sae, nn.Module) else None, store, lm)
