"""Training metrics to `train_log.jsonl`, and optionally to Weights & Biases or TensorBoard."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from types import ModuleType

from monoscope.artifacts import atomic_write_bytes


class MetricLogger:
    """Appends one JSON line per logged step; on resume, drops lines past the checkpoint so a
    resumed run's log has each step once. With backend 'wandb' the run goes to the project
    "monoscope" (WANDB_MODE=offline keeps it local, in <out>/wandb); with 'tensorboard' the
    events go to <out>/tensorboard."""

    def __init__(self, path: Path, backend: str, resume_step: int, config: dict) -> None:
        self._wandb = self._tensorboard = None
        if backend == "wandb":
            wandb = require_backend("wandb")
            self._wandb = wandb.init(project="monoscope", config=config, dir=str(path.parent))
        elif backend == "tensorboard":
            require_backend("tensorboard")
            from torch.utils.tensorboard import SummaryWriter

            self._tensorboard = SummaryWriter(log_dir=str(path.parent / "tensorboard"))
        self.path = path
        if path.exists():
            kept = [
                line
                for line in path.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= resume_step
            ]
            atomic_write_bytes(path, "".join(f"{line}\n" for line in kept).encode())
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())

    def log(self, metrics: dict) -> None:
        self._file.write(json.dumps(metrics) + "\n")
        self._file.flush()
        if self._wandb is not None:
            self._wandb.log(metrics, step=metrics["step"])
        if self._tensorboard is not None:
            for key, value in metrics.items():
                if key != "step":
                    self._tensorboard.add_scalar(key, value, metrics["step"])

    def close(self) -> None:
        self._file.close()
        if self._wandb is not None:
            self._wandb.finish()
        if self._tensorboard is not None:
            self._tensorboard.close()


def require_backend(backend: str) -> ModuleType | None:
    """The package of an optional logging backend ('wandb', 'tensorboard'; None for 'none'),
    or an ImportError naming the extra that installs it."""
    if backend == "none":
        return None
    try:
        return importlib.import_module(backend)
    except ImportError:
        raise ImportError(
            f"--logger {backend} needs the {backend} package: pip install 'monoscope[{backend}]'"
        ) from None
