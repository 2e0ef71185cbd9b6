"""Progress of an analysis pass: the accumulator's state in one safetensors file beside the
store (`<db>.progress.safetensors`), written atomically every few batches.

The file also records the run's identity (SAE, store, parameters); a checkpoint of another run
is never resumed from.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes
from torch import Tensor

from monoscope.artifacts import atomic_write_bytes


def checkpoint_path(db: Path) -> Path:
    return db.with_name(db.name + ".progress.safetensors")


def save_checkpoint(db: Path, state: dict[str, Tensor], identity: dict) -> None:
    tensors = {k: v.contiguous() for k, v in state.items()}
    data = save_bytes(tensors, metadata={"identity": json.dumps(identity, sort_keys=True)})
    atomic_write_bytes(checkpoint_path(db), data)


def load_checkpoint(db: Path, identity: dict) -> dict[str, Tensor] | None:
    """The saved state if a checkpoint of this very run exists, else None."""
    path = checkpoint_path(db)
    if not path.exists():
        return None
    with safe_open(str(path), framework="pt") as f:
        recorded = (f.metadata() or {}).get("identity")
    if recorded != json.dumps(identity, sort_keys=True):
        return None
    return load_bytes(path.read_bytes())
