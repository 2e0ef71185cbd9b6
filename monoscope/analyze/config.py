"""`AnalyzeConfig`: everything `monoscope analyze` needs; field docstrings are the CLI help."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

SPLITS = ("all", "train", "heldout")
EXPORTS = ("", "parquet")

# Fields that change how the run goes but not what it computes: a store written with other
# values of these can still be resumed or reused.
_OPERATIONAL = (
    "sae",
    "acts",
    "out",
    "model",
    "cache_entries",  # windows come out the same with or without the cache, up to rounding
    "export",
    "checkpoint_every",
    "overwrite",
    "progress",
    "device",  # the same numbers on any device, up to rounding
)


@dataclass
class AnalyzeConfig:
    sae: str = "runs/demo/sae"
    """SAE folder (monoscope, SAELens or sparsify format)."""
    acts: str = "runs/demo/acts"
    """Activation store the SAE reads (its token ids and positions locate the examples)."""
    out: str = "runs/demo/features.db"
    """The feature store to write (SQLite)."""
    model: str | None = None
    """Model for the logit effects and the token texts (default: the store's model)."""
    split: str = "all"
    """Rows of the store to analyse: all, train or heldout."""
    max_tokens: int = 0
    """Analyse only the first this many tokens of the split, in store order (0: all)."""
    batch_size: int = 4096
    """Activation rows per SAE encode."""
    top_n: int = 20
    """Top-activating examples kept per feature."""
    n_quantiles: int = 10
    """Activation intervals, linearly spaced between 0 and the feature's max, to sample from."""
    quantile_examples: int = 3
    """Examples sampled at random per interval."""
    random_examples: int = 10
    """Random examples per feature on which it does not fire (for the scorers)."""
    window: int = 32
    """Tokens shown per example: 3/4 before the centre token, 1/4 after, within its context."""
    n_bins: int = 50
    """Bins of each feature's activation histogram (log-spaced, shared by all features)."""
    neighbours: int = 10
    """Nearest features by decoder cosine kept per feature, with their co-occurrence."""
    exact_neighbours: int | None = None
    """Dictionaries of up to this many features get exact neighbours (F² x d_in work: minutes at
    131k features on a few CPU cores, hours at 1M); larger ones an approximate search over
    k-means lists (about sqrt(F)/8 times less work; see analyze/neighbours.py). 0: always exact;
    unset: 131,072 on the CPU, 2,097,152 on an accelerator (one matmul a tile)."""
    logit_tokens: int = 10
    """Top and bottom tokens kept per feature by direct logit effect."""
    logits: bool = True
    """Compute logit effects (needs the model's weights). --no-logits skips them, and a model
    that cannot be loaded is then only a warning (token texts are left out too)."""
    map: bool = True
    """Lay the features out in 2-D with UMAP on their decoder directions (needs umap-learn:
    pip install 'monoscope[map]')."""
    map_epochs: int = 200
    """UMAP optimisation epochs (fewer is faster and rougher)."""
    cache_entries: int = 1 << 23
    """Non-zero activations of the pass kept in memory (12 bytes each) so that example windows
    need no second encode; rows beyond it are re-encoded from the store (0: none)."""
    seed: int = 0
    """Seed of the random samples (quantile intervals, non-firing examples) and of the map."""
    checkpoint_every: int = 25
    """Batches between progress checkpoints (a killed run resumes from the last one)."""
    export: str = ""
    """Also write each table as a file next to the database: 'parquet' (needs pyarrow)."""
    overwrite: bool = False
    """Replace an existing feature store at --out instead of refusing (or resuming)."""
    progress: bool = True
    """Show a progress bar."""
    device: str = "auto"
    """Device the SAE encodes on (and the model is loaded on): auto (CUDA when present, else the
    CPU), cpu, cuda, cuda:N or mps."""

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        if self.export not in EXPORTS:
            raise ValueError(f"export must be 'parquet' or empty, got {self.export!r}")
        positive = ("batch_size", "top_n", "n_quantiles", "window", "n_bins", "checkpoint_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        nonnegative = (
            "max_tokens",
            "quantile_examples",
            "random_examples",
            "neighbours",
            "exact_neighbours",
        )
        for name in (*nonnegative, "cache_entries"):
            if (getattr(self, name) or 0) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.logit_tokens < 1:
            raise ValueError(f"logit_tokens must be at least 1, got {self.logit_tokens}")
        if self.map_epochs < 1:
            raise ValueError(f"map_epochs must be at least 1, got {self.map_epochs}")

    def params(self) -> dict[str, Any]:
        """What determines the store's contents (recorded in meta.params; a rerun must agree on
        them to resume or reuse a store)."""
        return {k: v for k, v in asdict(self).items() if k not in _OPERATIONAL}

    @property
    def window_before(self) -> int:
        """Tokens shown before the centre token (the model reads left to right)."""
        return self.window - 1 - self.window // 4

    @property
    def window_after(self) -> int:
        return self.window // 4
