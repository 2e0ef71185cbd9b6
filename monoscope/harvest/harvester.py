"""`harvest`: model + corpus -> activation store, resumable, with the forward pass stopped early."""

from __future__ import annotations

import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from monoscope.data import CorpusSpec
from monoscope.distributed import launched_world
from monoscope.harvest.config import HarvestConfig
from monoscope.harvest.forward import ShardMaker, fill, progress_bar
from monoscope.harvest.manifest import finish, open_store, say_complete
from monoscope.harvest.parallel import run_in_world
from monoscope.harvest.plan import plan_shards
from monoscope.harvest.records import record_in_manifest, settle_entries
from monoscope.harvest.store import ActivationStore
from monoscope.models import LanguageModel, load_model
from monoscope.runtime import resolve_device


def run(cfg: HarvestConfig, lm: LanguageModel | None = None) -> ActivationStore:
    """Harvest activations as `cfg` says; resume an incomplete store at cfg.out. Under torchrun
    the processes share the work (parallel.py) and write the store one process would."""
    world = launched_world()
    if world.distributed:
        return run_in_world(cfg, lm, world)
    lm = lm or load_model(cfg.model, dtype=cfg.model_dtype, device=resolve_device(cfg.device))
    spec, out, manifest = open_store(cfg, lm)
    settle_entries(out, manifest, plan_shards(cfg, manifest), False, cfg.verify)
    if manifest["complete"]:
        say_complete(cfg, out, manifest)
        return ActivationStore(out)
    start = time.perf_counter()
    bar = progress_bar(cfg.progress, cfg.tokens, manifest["tokens"], "harvest")
    maker = ShardMaker(cfg, lm, spec, manifest["contexts"])
    fill(maker, plan_shards(cfg, manifest), partial(record_in_manifest, out, manifest), bar)
    finish(cfg, out, manifest, time.perf_counter() - start)
    return ActivationStore(out)


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
