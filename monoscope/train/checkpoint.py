"""Training checkpoints: everything needed to continue a run bit-identically.

`checkpoint-<step>.safetensors` holds the SAE parameters, Adam's moment estimates and the
dead-latent counters; `checkpoint.json` holds the step, the scalar state and the name and sha256 of
that tensor file. Both are written atomically, tensors first, so the JSON never points at a file
that is not whole; older tensor files are removed only after the JSON moved on.

A feature-sharded run (`--shard-features`) holds different tensors in each process: process r
of N writes `checkpoint-<step>-<r>of<N>.safetensors`, and `checkpoint.json` (process 0's, once
every file is whole) lists each file with its sha256. Such a checkpoint resumes in N processes
only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from monoscope.artifacts import (
    CorruptFileError,
    read_sealed_json,
    sha256_file,
    write_sealed_json,
)
from monoscope.distributed import World, barrier, gather_objects
from monoscope.sae.sharded import Trainable
from monoscope.tensorfiles import atomic_write_safetensors
from monoscope.train.average import WeightAverage
from monoscope.train.basis import Rotation
from monoscope.train.dead import DeadLatentTracker
from monoscope.train.target_l0 import L0Controller

POINTER = "checkpoint.json"


@dataclass
class TrainingState:
    step: int
    scalars: dict  # JSON-able: controller state, SAE config, timing...
    tensors: dict[str, torch.Tensor]


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Adam's per-parameter state as flat named tensors, plus its param groups (JSON-able)."""
    state = opt.state_dict()
    flat = {
        f"adam.{index}.{key}": value
        for index, per_param in state["state"].items()
        for key, value in per_param.items()
    }
    return flat, state["param_groups"]


def restore_optimizer(opt: torch.optim.Optimizer, tensors: dict, groups: list[dict]) -> None:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("adam."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    opt.load_state_dict({"state": state, "param_groups": groups})


def save_checkpoint(folder: Path, state: TrainingState, shard: World | None = None) -> None:
    """Write `state` as the checkpoint in `folder`; with `shard` (a feature-sharded run's
    world), this process's part of it (every process must call this)."""
    tensors = {k: v.detach().contiguous() for k, v in state.tensors.items()}  # where they are
    if shard is None:
        name = f"checkpoint-{state.step:08d}.safetensors"
        pointer = {"file": name, "sha256": atomic_write_safetensors(folder / name, tensors)}
        write_sealed_json(folder / POINTER, {"step": state.step, **pointer, **state.scalars})
        _remove_older(folder, "checkpoint-*.safetensors", name)
        return
    suffix = f"{shard.rank}of{shard.size}.safetensors"
    name = f"checkpoint-{state.step:08d}-{suffix}"
    shards = gather_objects(
        {"file": name, "sha256": atomic_write_safetensors(folder / name, tensors)}
    )
    if shard.is_main:
        write_sealed_json(folder / POINTER, {"step": state.step, "shards": shards, **state.scalars})
    barrier()  # each older file stays until the pointer has moved on from it
    _remove_older(folder, f"checkpoint-*-{suffix}", name)


def _remove_older(folder: Path, pattern: str, kept: str) -> None:
    for old in folder.glob(pattern):
        if old.name != kept:
            old.unlink()


def load_checkpoint(
    folder: Path, shard: World | None = None, device: torch.device | None = None
) -> TrainingState | None:
    """The latest checkpoint in `folder` (with `shard`, this process's part of a feature-sharded
    run's), its tensors on `device` (default the CPU), or None; a corrupt one is an error, not
    ignored; one of another layout is refused."""
    pointer = folder / POINTER
    if not pointer.exists():
        return None
    try:
        meta = read_sealed_json(pointer)
        entry = _own_entry(meta, shard, folder)
        path = folder / entry["file"]
        # Hashed as it is read, then loaded: its bytes are never all in memory beside the
        # tensors (a checkpoint holds three times the weights).
        digest = sha256_file(path)
    except (CorruptFileError, OSError, KeyError, TypeError) as err:
        raise RuntimeError(
            f"checkpoint {pointer} cannot be read ({type(err).__name__}: {err}); "
            "pass --overwrite to start over"
        ) from err
    if digest != entry["sha256"]:
        raise RuntimeError(
            f"checkpoint {path} does not match its sha256; pass --overwrite to start over"
        )
    step = meta.pop("step")
    for key in ("file", "sha256", "shards"):
        meta.pop(key, None)
    return TrainingState(step, meta, _read_tensors(path, device or torch.device("cpu")))


def _read_tensors(path: Path, device: torch.device) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, each copied from the mapped file to `device` as it
    is read (host memory never holds the file), into torch's own allocation: safetensors may
    place a tensor at any 4-byte offset, and fused Adam then rounds differently (a resumed run
    would not go on bit for bit)."""
    with safe_open(path, framework="pt") as f:
        return {name: f.get_tensor(name).to(device, copy=True) for name in f.keys()}  # noqa: SIM118


def _own_entry(meta: dict, shard: World | None, folder: Path) -> dict:
    """The {file, sha256} of this process's tensors in the pointer `meta`; ValueError when the
    checkpoint's layout is not this run's."""
    shards = meta.get("shards")
    if shards is None:
        if shard is not None:
            raise ValueError(
                f"{folder} holds a checkpoint of a run without --shard-features: resume it "
                "without, or pass --overwrite to start over"
            )
        return meta
    if shard is None or len(shards) != shard.size:
        processes = f"{len(shards)} process{'es' * (len(shards) != 1)}"
        raise ValueError(
            f"{folder} holds a checkpoint of a run with --shard-features in {processes}: "
            "resume it so, or pass --overwrite to start over"
        )
    entry: dict = shards[shard.rank]
    return entry


@dataclass
class RunParts:
    """Every piece of a run's mutable state, which a checkpoint holds."""

    sae: Trainable
    opt: torch.optim.Optimizer
    tracker: DeadLatentTracker
    controller: L0Controller | None
    average: WeightAverage | None
    rotation: Rotation | None


@dataclass
class Checkpointer:
    """Writes a run's state to `folder` and restores it; `record` is written with each
    checkpoint as it is (the requested settings, the defaults they resolved to, the data's
    fingerprint)."""

    folder: Path
    parts: RunParts
    record: dict
    writes: bool = True
    """False in the processes of a data-parallel run other than process 0, which writes for
    all (their states are the same)."""
    shard: World | None = None
    """A feature-sharded run's world: every process writes its own part."""

    def save(self, step: int) -> None:
        if not self.writes:
            return
        p = self.parts
        tensors, groups = optimizer_tensors(p.opt)
        tensors |= {f"sae.{k}": v for k, v in p.sae.state_dict().items()}
        tensors["dead.tokens_since_fired"] = p.tracker.tokens_since_fired
        if p.rotation is not None:
            tensors |= p.rotation.tensors()
        if p.average is not None:
            tensors |= p.average.tensors()
        scalars = {
            "sae": p.sae.cfg.to_json(),
            "adam_groups": groups,
            "controller": p.controller.state() if p.controller else None,
            **self.record,
        }
        save_checkpoint(self.folder, TrainingState(step, scalars, tensors), self.shard)

    def restore(self, state: TrainingState) -> int:
        """Load `state` into the parts; its step."""
        p = self.parts
        p.sae.load_state_dict({k[4:]: v for k, v in state.tensors.items() if k.startswith("sae.")})
        restore_optimizer(p.opt, state.tensors, state.scalars["adam_groups"])
        counters = state.tensors["dead.tokens_since_fired"]
        p.tracker.tokens_since_fired = counters.to(p.tracker.tokens_since_fired.device).clone()
        if p.controller is not None:
            p.controller.load_state(state.scalars["controller"])
        if p.average is not None:
            p.average.load(state.tensors, updates=state.step)
        return state.step
