"""Training metrics to `train_log.jsonl`, and optionally to Weights & Biases or TensorBoard."""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path
from types import ModuleType

from monoscope.artifacts import CorruptFileError, atomic_write_bytes

log = logging.getLogger(__name__)


def read_metrics(path: Path) -> list[dict]:
    """The logged rows of `path` (a train_log.jsonl), in order. A last line that does not parse
    is a write cut short (a crash, a full disk) and is dropped: it is past the last checkpoint,
    as each step is logged before it is checkpointed. Any other line that does not parse is
    damage: CorruptFileError naming the file and line."""
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    rows = []
    for number, line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            problem = f"not valid JSON ({err.msg} at char {err.pos})"
        else:
            if isinstance(row, dict) and isinstance(row.get("step"), int):
                rows.append(row)
                continue
            problem = "not a JSON object with an integer step"
        if number == lines[-1][0]:
            log.warning("%s: dropped its unfinished last line (a write cut short)", path)
            break
        raise CorruptFileError(
            f"{path} is damaged: line {number} is {problem}; delete that line (or the file: "
            "it is only the log) and rerun"
        )
    return rows


class MetricLogger:
    """Appends one JSON line per logged step; on resume, drops lines past the checkpoint so a
    resumed run's log has each step once. With backend 'wandb' the run goes to the project
    "monoscope" (WANDB_MODE=offline keeps it local, in <out>/wandb); with 'tensorboard' the
    events go to <out>/tensorboard."""

    def __init__(self, path: Path, backend: str, resume_step: int, config: dict) -> None:
        self._wandb = self._tensorboard = None
        if backend == "wandb":
            wandb = require_backend("wandb")
            assert wandb is not None  # None only for backend "none"
            self._wandb = wandb.init(project="monoscope", config=config, dir=str(path.parent))
        elif backend == "tensorboard":
            require_backend("tensorboard")
            from torch.utils.tensorboard import SummaryWriter

            self._tensorboard = SummaryWriter(log_dir=str(path.parent / "tensorboard"))
        self.path = path
        if path.exists():
            kept = [row for row in read_metrics(path) if row["step"] <= resume_step]
            atomic_write_bytes(path, "".join(f"{json.dumps(row)}\n" for row in kept).encode())
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
