"""Progress of an analysis pass: the accumulator's state in one safetensors file beside the
store (`<db>.progress.safetensors`), written atomically every few batches.

The file also records the run's identity (SAE, store, parameters); a checkpoint of another run
is never resumed from. A sha256 of its tensors (in its metadata) is checked on load: a corrupt
file is a clear error naming it, never a resume from damaged state.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes
from torch import Tensor

from monoscope.artifacts import atomic_write_bytes


def checkpoint_path(db: Path) -> Path:
    return db.with_name(db.name + ".progress.safetensors")


class CorruptCheckpointError(ValueError):
    """The progress file is damaged: it cannot be read, or its tensors fail their checksum."""


def same_run(identity: dict) -> dict:
    """What must match between a run on disk (a store's meta, a checkpoint) and a run that
    continues or reuses it: the SAE's and the store's contents and the parameters, not the
    paths (the same files may be named differently, or moved)."""
    return {
        "sae": identity["sae"]["sha256"],
        "acts": identity["acts"]["manifest_sha256"],
        "site": identity["acts"]["site"],
        **{f"params.{k}": v for k, v in identity["params"].items()},
    }


def tensors_sha256(tensors: dict[str, Tensor]) -> str:
    """sha256 over the tensors' names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name} {t.dtype} {tuple(t.shape)}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_checkpoint(db: Path, state: dict[str, Tensor], identity: dict) -> None:
    tensors = {k: v.contiguous() for k, v in state.items()}
    metadata = {
        "identity": json.dumps(identity, sort_keys=True),
        "sha256": tensors_sha256(tensors),
    }
    atomic_write_bytes(checkpoint_path(db), save_bytes(tensors, metadata=metadata))


def load_checkpoint(db: Path, identity: dict) -> dict[str, Tensor] | None:
    """The saved state if a checkpoint of this very run exists, else None;
    CorruptCheckpointError if the file is damaged."""
    path = checkpoint_path(db)
    if not path.exists():
        return None
    fix = f"delete {path} to restart the pass, or pass --overwrite"
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        if same_run(json.loads(metadata.get("identity", "null"))) != same_run(identity):
            return None
        state = load_bytes(path.read_bytes())
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as err:
        raise CorruptCheckpointError(f"{path} cannot be read ({err}): {fix}") from None
    if metadata.get("sha256") != tensors_sha256(state):
        raise CorruptCheckpointError(f"{path} fails its checksum: {fix}")
    return state
