"""Training checkpoints: everything needed to continue a run bit-identically.

`checkpoint-<step>.safetensors` holds the SAE parameters, Adam's moment estimates and the
dead-latent counters; `checkpoint.json` holds the step, the scalar state and the name and sha256 of
that tensor file. Both are written atomically, tensors first, so the JSON never points at a file
that is not whole; older tensor files are removed only after the JSON moved on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

from monoscope.artifacts import (
    atomic_write_bytes,
    read_sealed_json,
    sha256_bytes,
    write_sealed_json,
)
from monoscope.sae import SparseAutoencoder
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


def save_checkpoint(folder: Path, state: TrainingState) -> None:
    data = save_bytes({k: v.detach().cpu().contiguous() for k, v in state.tensors.items()})
    name = f"checkpoint-{state.step:08d}.safetensors"
    atomic_write_bytes(folder / name, data)
    write_sealed_json(
        folder / POINTER,
        {"step": state.step, "file": name, "sha256": sha256_bytes(data), **state.scalars},
    )
    for old in folder.glob("checkpoint-*.safetensors"):
        if old.name != name:
            old.unlink()


def load_checkpoint(folder: Path) -> TrainingState | None:
    """The latest checkpoint in `folder`, or None; a corrupt one is an error, not ignored."""
    pointer = folder / POINTER
    if not pointer.exists():
        return None
    try:
        meta = read_sealed_json(pointer)
        data = (folder / meta["file"]).read_bytes()
    except (ValueError, OSError, KeyError, TypeError) as err:
        raise RuntimeError(
            f"checkpoint {pointer} cannot be read ({type(err).__name__}: {err}); "
            "pass --overwrite to start over"
        ) from err
    if sha256_bytes(data) != meta["sha256"]:
        raise RuntimeError(
            f"checkpoint {folder / meta['file']} does not match its sha256; "
            "pass --overwrite to start over"
        )
    step = meta.pop("step")
    for key in ("file", "sha256"):
        meta.pop(key)
    return TrainingState(step, meta, load_bytes(data))


@dataclass
class RunParts:
    """Every piece of a run's mutable state, which a checkpoint holds."""

    sae: SparseAutoencoder
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
        save_checkpoint(self.folder, TrainingState(step, scalars, tensors))

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
