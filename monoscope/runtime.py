"""Device, dtype, thread and cache-directory decisions, in one place, with the reasons."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import torch

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    """Map 'bf16', 'bfloat16', torch.bfloat16 ... to a torch dtype; a clear error otherwise."""
    if isinstance(name, torch.dtype):
        return name
    try:
        return DTYPES[name.lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; choose one of {sorted(DTYPES)}") from None


def dtype_name(dtype: torch.dtype) -> str:
    """The canonical name written into manifests ('float32', 'bfloat16', 'float16')."""
    return str(dtype).removeprefix("torch.")


def default_device() -> torch.device:
    # CUDA when present: harvesting is forward passes, which a GPU does far faster.
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"
"""What `--device` accepts (every stage that computes: train, eval, analyze, steer, ...)."""


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """The torch device `--device NAME` means: 'auto' (or None) is CUDA when present, else the
    CPU; 'cuda', 'cuda:N' and 'mps' must exist on this machine (a clear error otherwise,
    rather than a run that silently falls back to the CPU)."""
    if isinstance(name, torch.device):
        return name
    if name is None or name == "auto":
        return default_device()
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device: use {DEVICE_CHOICES}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: no CUDA device is available here (use cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"--device {name}: MPS is not available here (use cpu)")
    elif device.type != "cpu":
        raise ValueError(f"--device {name!r}: use {DEVICE_CHOICES}")
    return device


def configure_threads(n: int | None = None) -> int:
    """Use every core for intra-op parallelism unless told otherwise; the processes torchrun
    starts on one machine (LOCAL_WORLD_SIZE) share them out rather than each taking all.

    torch defaults to the physical-core count, which on small shared VMs is sometimes 1;
    `MONOSCOPE_THREADS` overrides.
    """
    local_processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    cores = max(1, (os.cpu_count() or 1) // local_processes)
    n = n or int(os.environ.get("MONOSCOPE_THREADS", 0)) or cores
    torch.set_num_threads(n)
    return n


@contextlib.contextmanager
def intra_op_threads(n: int) -> Iterator[None]:
    """Run a block with n intra-op threads, then restore the previous count.

    For code made of many small tensor ops (analyze's per-batch bookkeeping: gathers, bincounts
    and sorts over ~10^5 entries): every parallel region synchronises all threads, which costs
    more than it saves on ops that small, and far more when other processes share the cores
    (benchmarks/analyze.py measures both).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def cache_dir() -> Path:
    """User cache for converted models: $MONOSCOPE_CACHE, else $XDG_CACHE_HOME/monoscope."""
    root = os.environ.get("MONOSCOPE_CACHE")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "monoscope"
