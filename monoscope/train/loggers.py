"""Training metrics to `train_log.jsonl`, and optionally to Weights & Biases or TensorBoard."""

from __future__ import annotations

import json
from pathlib import Path

from monoscope.artifacts import atomic_write_bytes


class MetricLogger:
    """Appends one JSON line per logged step; on resume, drops lines past the checkpoint so a
    resumed run's log has each step once."""

    def __init__(self, path: Path, backend: str, resume_step: int, config: dict) -> None:
        self.path = path
        if path.exists():
            kept = [
                line
                for line in path.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= resume_step
            ]
            atomic_write_bytes(path, "".join(f"{line}\n" for line in kept).encode())
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        self._wandb = self._tensorboard = None
        if backend == "wandb":
            import wandb  # optional: pip install wandb

            self._wandb = wandb.init(project="monoscope", config=config, dir=str(path.parent))
        elif backend == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter  # needs: pip install tensorboard

            self._tensorboard = SummaryWriter(log_dir=str(path.parent / "tensorboard"))

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
