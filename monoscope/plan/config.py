"""`PlanConfig`: the SAE run `monoscope plan` sizes up before anything is spent."""

from __future__ import annotations

from dataclasses import dataclass, field

from monoscope.plan.sizes import parse_memory, parse_size
from monoscope.runtime import parse_dtype
from monoscope.sae.config import COMPUTE_DTYPES
from monoscope.sae.training import DEFAULT_K

PLANNED_ARCHS = ("topk", "batchtopk")
"""The architectures whose training step the plan models: the TopK family's sparse step."""


@dataclass
class PlanConfig:
    model: str = "smollm2-135m"
    """Model: a built-in name, a local folder or a Hugging Face hub id (only its config is
    read, no weights); not read with --d-model."""
    site: str = "blocks.15.hook_resid_post"
    """Site the SAE reads (mlp.hook_post: the MLP's width; the others: d_model)."""
    features: str = "16x"
    """Dictionary size: a count (34M, 1.5M, 16k, 9216) or a multiple of the width (16x)."""
    tokens: int = 1_000_000_000
    """Training tokens (8B, 500M, ...): the store's size and the run's length."""
    gpus: int = 1
    """Ranks (GPUs) of the run: each with a part of every batch (data-parallel), or with
    --shard-features a slice of the dictionary."""
    gpu_mem: str | None = None
    """Memory of each GPU, e.g. 80G (80G, 80GB and 80GiB all mean 80 GiB); unset: the memory of
    this machine's GPU, if it has one."""
    d_model: int | None = None
    """Width of the activations at the site: the model is then not read."""
    batch_size: int = 4096
    """Tokens per optimizer step, over all ranks (train's --batch-size)."""
    k: int = DEFAULT_K
    """Active latents per token."""
    arch: str = field(default="topk", metadata={"choices": PLANNED_ARCHS})
    """SAE architecture (the TopK family's training step is what the plan models)."""
    compute_dtype: str = field(default="float32", metadata={"choices": COMPUTE_DTYPES})
    """Precision of the encoder's matmul (train's --compute-dtype): the measured rate's, and the
    dense path's pre-activations'."""
    store_dtype: str = "bfloat16"
    """Dtype of the stored activations (harvest --dtype): the store's size per value."""
    shard_features: bool = False
    """Plan a feature-sharded SAE: each rank holds 1/N of the dictionary and its Adam state,
    and encodes every row of the batch."""
    tokens_per_s: float | None = None
    """Throughput of the whole run (all ranks), measured or given: the time is tokens / this,
    and nothing is measured."""
    device: str = "auto"
    """Device to measure the matmul and Adam rates on: auto, cpu, cuda, cuda:N or mps."""
    link_gb_s: float = 50.0
    """Bandwidth between ranks, GB/s a rank (50: a 400 Gb/s InfiniBand link; NVLink within a
    node is faster), for the communication time."""
    measure_seconds: float = 0.5
    """Seconds each measurement runs."""

    def __post_init__(self) -> None:
        for name, low in (("gpus", 1), ("batch_size", 2), ("k", 1), ("tokens", 1)):
            if getattr(self, name) < low:
                flag = "--" + name.replace("_", "-")
                raise ValueError(f"{flag} must be at least {low}, got {getattr(self, name)}")
        if self.d_model is not None and self.d_model < 1:
            raise ValueError(f"--d-model must be at least 1, got {self.d_model}")
        for name in ("tokens_per_s", "link_gb_s", "measure_seconds"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {value}")
        if self.arch not in PLANNED_ARCHS:
            raise ValueError(
                f"--arch {self.arch}: the plan models the TopK family's step "
                f"({', '.join(PLANNED_ARCHS)}); a dense step's memory grows with batch x features"
            )
        parse_dtype(self.store_dtype)
        if self.gpu_mem is not None:
            parse_memory(self.gpu_mem)
        self.n_features(1)  # the form of --features

    def n_features(self, d_in: int) -> int:
        """The dictionary's size for activations of width `d_in`."""
        text = str(self.features).strip().lower()
        if text.endswith("x"):
            try:
                n = int(float(text[:-1]) * d_in)
            except ValueError:
                n = 0
        else:
            n = parse_size(text, "--features")
        if n < 1:
            raise ValueError(
                f"--features must be a count (34M, 16k, 9216) or a multiple of the width like "
                f"16x, got {self.features!r}"
            )
        return n
