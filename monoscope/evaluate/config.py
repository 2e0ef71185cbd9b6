"""`EvalConfig`: what `monoscope eval` measures, on which rows, and where it writes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SPLITS = ("heldout", "train", "all")


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be heldout, train or all, got {split!r}")


@dataclass
class EvalConfig:
    sae: str = "runs/demo/sae"
    """SAE folder to evaluate."""
    acts: str = "runs/demo/acts"
    """Activation store the SAE was trained on, or a .npy/.safetensors [n, d] array (the rows
    `train` holds out of an array: its last 5%); --split picks the rows measured."""
    model: str | None = None
    """Model to splice the SAE into for loss recovered and KL (none: reconstruction only)."""
    out: str | None = None
    """Report file (default: eval.json beside the SAE folder); plots go to plots/ next to it."""
    batch_size: int = 4096
    """Activation rows per SAE forward pass."""
    max_tokens: int = 200_000
    """Tokens to evaluate, the first of the split in store order (0: the whole split)."""
    split: str = "heldout"
    """Rows to evaluate: heldout; train (as seen in training: in-sample, for comparing with
    tools that report training-set metrics); or all (every row of an array, both splits of a
    store). Splice metrics need heldout."""
    n_contexts: int = 64
    """Held-out contexts for the splice metrics."""
    splice_batch: int = 8
    """Contexts per model forward pass (memory: a few splice_batch x context x vocab floats)."""
    outlier_multiple: float = 10.0
    """Also report metrics without, and on only, the tokens of norm over this multiple of the
    train split's median norm: the rows `train` skips at the same --outlier-multiple (0: off)."""
    plots: bool = False
    """Plot the feature-density histogram (needs matplotlib: pip install monoscope[plots])."""
    device: str = "auto"
    """Device the SAE and the model run on: auto (CUDA when present, else the CPU), cpu, cuda,
    cuda:N or mps."""

    def __post_init__(self) -> None:
        for name in ("batch_size", "n_contexts", "splice_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        check_split(self.split)
        if self.max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0 (0: all), got {self.max_tokens}")
        if self.outlier_multiple != 0 and self.outlier_multiple < 1:
            raise ValueError(
                f"outlier_multiple must be 0 (off) or at least 1, got {self.outlier_multiple}"
            )
        if self.out and Path(self.out).is_dir():
            raise ValueError(
                f"--out {self.out} is a folder: give the report's file, e.g. "
                f"{Path(self.out) / 'eval.json'}"
            )

    @property
    def out_path(self) -> Path:
        return Path(self.out) if self.out else Path(self.sae).parent / "eval.json"
