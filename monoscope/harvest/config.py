"""`HarvestConfig`: everything `monoscope harvest` needs; field docstrings are the CLI help."""

from __future__ import annotations

from dataclasses import dataclass, field

from monoscope.runtime import parse_dtype


@dataclass
class HarvestConfig:
    model: str = "smollm2-135m"
    """Model: a built-in name (smollm2-135m), a local folder, or a Hugging Face hub id."""
    sites: list[str] = field(default_factory=lambda: ["blocks.15.hook_resid_post"])
    """Sites to capture, e.g. blocks.15.hook_resid_post (several go to one store)."""
    corpus: str = "builtin"
    """Corpus: 'builtin', a .txt/.jsonl/.parquet file or folder, or hf:DATASET."""
    tokens: int = 1_000_000
    """Number of tokens (activation rows per site) to store."""
    out: str = "runs/demo/acts"
    """Output folder of the activation store."""
    dtype: str = "float32"
    """Storage dtype of activations: float32, bfloat16 (bf16) or float16 (fp16)."""
    model_dtype: str = "float32"
    """Dtype the model computes in; bfloat16 is about twice as fast on recent CPUs."""
    device: str = "auto"
    """Device the model runs on: auto (CUDA when present, else the CPU), cpu, cuda, cuda:N or
    mps."""
    context: int = 128
    """Tokens per packed context, BOS included."""
    batch_tokens: int = 4096
    """Tokens per forward pass (rounded down to whole contexts, at least one)."""
    shard_tokens: int = 65_536
    """Rows per shard file (shards end on whole forward batches)."""
    text_field: str = "text"
    """Field holding the text in .jsonl/.parquet files and Hugging Face datasets."""
    corpus_config: str | None = None
    """Hugging Face dataset configuration name."""
    corpus_split: str = "train"
    """Hugging Face dataset split."""
    seed: int = 0
    """Seed of the corpus document order."""
    include_bos: bool = False
    """Also store the BOS position (excluded by default: its norm is an outlier)."""
    heldout_fraction: float = 0.05
    """Fraction of contexts reserved for evaluation (chosen by a hash of the context id)."""
    overwrite: bool = False
    """Replace an existing store at --out instead of resuming it."""
    verify: bool = False
    """On a rerun over an existing store, also check every shard's sha256 before resuming or
    calling it complete (a read of the whole store; shard sizes are always checked)."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        if self.tokens <= 0:
            raise ValueError(f"tokens must be a positive number of tokens, got {self.tokens}")
        if self.context < 2:
            raise ValueError(f"context must be at least 2 (BOS + one token), got {self.context}")
        if self.batch_tokens <= 0 or self.shard_tokens <= 0:
            raise ValueError("batch_tokens and shard_tokens must be positive")
        if not self.sites:
            raise ValueError("sites: name at least one site, e.g. blocks.15.hook_resid_post")
        if len(set(self.sites)) != len(self.sites):
            raise ValueError(f"sites: duplicates in {self.sites}")
        if not 0.0 <= self.heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must be in [0, 1), got {self.heldout_fraction}")
        parse_dtype(self.dtype)
        parse_dtype(self.model_dtype)
