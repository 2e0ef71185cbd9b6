"""A harvest shared by the processes torchrun starts: the store one process would write.

The plan (plan.py) fixes every shard's contexts and rows before any forward pass, so the shards
still to write are dealt out in turn, shard i of the list to process i mod N; each process
skips the others' contexts in the corpus stream, runs the model on its own in the batches a
single process would use, and writes each shard, then its entry file (records.py). Process 0
alone writes the manifest: it opens (or resumes) the store first, and folds the entries in once
every process is done. A rerun after a kill (of any process) keeps every shard with an entry,
and deals out the rest again, whatever the number of processes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any, TypeVar, cast

import torch

from monoscope.artifacts import read_sealed_json, sha256_file
from monoscope.distributed import (
    World,
    all_reduce_sum_,
    broadcast_object,
    joined,
    process_device,
)
from monoscope.harvest.config import HarvestConfig
from monoscope.harvest.forward import ShardMaker, fill, progress_bar
from monoscope.harvest.manifest import check_inputs, finish, open_store, say_complete
from monoscope.harvest.plan import plan_shards
from monoscope.harvest.records import record_in_entry_file, settle_entries
from monoscope.harvest.store import MANIFEST, ActivationStore, StoreError
from monoscope.models import LanguageModel, load_model

T = TypeVar("T")


class Together:
    """Steps the processes take in step: one that fails in any process fails in all (each
    stops with one line) rather than leaving the others waiting at the next collective."""

    def __init__(self, world: World, device: torch.device) -> None:
        self.world, self.device = world, device

    def each(self, step: Callable[[], T]) -> T:
        """`step` in every process."""
        return cast(T, self._run(step, True))

    def on_main(self, step: Callable[[], T]) -> T | None:
        """`step` in process 0 only (None elsewhere); the others wait for it."""
        return self._run(step, self.world.is_main)

    def _run(self, step: Callable[[], T], here: bool) -> T | None:
        failed = torch.zeros(self.world.size, device=self.device)
        try:
            result = step() if here else None
        except Exception:
            failed[self.world.rank] = 1
            all_reduce_sum_(failed)
            raise
        all_reduce_sum_(failed)
        if failed.any():
            ranks = ", ".join(str(r) for r in failed.nonzero().flatten().tolist())
            raise StoreError(
                f"harvest process {ranks} (of {self.world.size}) failed, its error says why; "
                f"process {self.world.rank} stopped with it"
            )
        return result


def run_in_world(cfg: HarvestConfig, lm: LanguageModel | None, world: World) -> ActivationStore:
    """Harvest as `cfg` says with the other processes of `world` (joined here if needed)."""
    device = lm.device if lm is not None else process_device(cfg.device, world)
    with joined(device):
        return _harvest(cfg, lm, Together(world, device))


def _harvest(cfg: HarvestConfig, lm: LanguageModel | None, together: Together) -> ActivationStore:
    world = together.world
    if lm is None:
        load = partial(load_model, cfg.model, cfg.model_dtype, together.device)
        first = together.on_main(load)  # first: it fills the download and conversion caches
        lm = together.each(lambda: first if first is not None else load())
    spec, out, fresh = together.each(partial(check_inputs, cfg, lm))
    settings = cast(dict[str, Any], broadcast_object(_settings(cfg, fresh)))
    together.each(partial(_check_same_settings, settings, _settings(cfg, fresh), world.rank))
    opened = cast(
        tuple[str, list[int]], broadcast_object(together.on_main(partial(_open_on_main, cfg, lm)))
    )
    manifest = together.each(partial(_read_shared_manifest, out, opened, world.rank))
    if manifest["complete"]:
        if world.is_main:
            say_complete(cfg, out, manifest)
        return ActivationStore(out)
    start = time.perf_counter()
    pending = set(opened[1])
    todo = [s for s in plan_shards(cfg, manifest) if s.index not in pending]
    mine = todo[world.rank :: world.size]
    desc = f"harvest (process 0 of {world.size})"
    bar = progress_bar(cfg.progress and world.is_main, sum(s.rows for s in mine), 0, desc)
    maker = ShardMaker(cfg, lm, spec, manifest["contexts"])
    together.each(partial(fill, maker, mine, partial(record_in_entry_file, out), bar))
    together.on_main(partial(_merge, cfg, out, manifest, world.size, start))
    return ActivationStore(out)


def _settings(cfg: HarvestConfig, fresh: dict[str, Any]) -> dict[str, Any]:
    """What every process must agree on: the whole config, and the store it would start (the
    model's revision: the weights each process loaded)."""
    return {**asdict(cfg), "store": fresh}


def _check_same_settings(main: dict[str, Any], mine: dict[str, Any], rank: int) -> None:
    differ = [k for k in main if main[k] != mine.get(k)]
    if differ:
        details = "; ".join(f"{k}: {mine.get(k)!r} here, {main[k]!r} in process 0" for k in differ)
        raise StoreError(
            f"harvest process {rank} was started with other settings than process 0 "
            f"({details}): start every process with the same command"
        )


def _open_on_main(cfg: HarvestConfig, lm: LanguageModel) -> tuple[str, list[int]]:
    """Open (or resume) the store in process 0: (sha256 of its manifest, indices of the shards
    already written beyond those the manifest lists)."""
    _, out, manifest = open_store(cfg, lm)
    pending = settle_entries(out, manifest, plan_shards(cfg, manifest), True, cfg.verify)
    return sha256_file(out / MANIFEST), sorted(pending)


def _read_shared_manifest(out: Path, opened: tuple[str, list[int]], rank: int) -> dict[str, Any]:
    """The manifest process 0 opened, as this process sees it: the same file, or an error."""
    path = out / MANIFEST
    shared = "--out must be one folder that every process reaches (a shared filesystem)"
    try:
        seen = sha256_file(path)
    except OSError as err:
        raise StoreError(f"harvest process {rank} cannot read {path} ({err}): {shared}") from err
    if seen != opened[0]:
        raise StoreError(
            f"harvest process {rank} sees another {path} than process 0 wrote: {shared}"
        )
    return read_sealed_json(path)


def _merge(
    cfg: HarvestConfig, out: Path, manifest: dict[str, Any], processes: int, start: float
) -> None:
    """In process 0, once every process is done: fold the entries into the manifest and mark
    the store complete (or say that the corpus ran out)."""
    settle_entries(out, manifest, plan_shards(cfg, manifest), True, False)
    manifest["processes"] = processes
    finish(cfg, out, manifest, time.perf_counter() - start)
