"""The interpret stage's command configs: `LLMOptions` (how `explain`, `score` and `specificity`
reach an LLM and what they may spend) and one dataclass per command. The field docstrings are
the CLI help; `monoscope.interpret.run(cfg)` runs any of them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from monoscope.interpret.scorers import SCORERS
from monoscope.interpret.scorers.binary import check_answers
from monoscope.sae.identity import SIGNS

BACKENDS = ("local", "openai", "anthropic")


@dataclass
class LLMOptions:
    db: str = "runs/demo/features.db"
    """The feature store written by `monoscope analyze`."""
    backend: str = "local"
    """LLM backend: local (transformers in-process), openai (any OpenAI-compatible endpoint, see
    --base-url) or anthropic."""
    model: str = ""
    """Model to call (default: the built-in smollm2-135m for local; required for openai and
    anthropic)."""
    base_url: str = ""
    """Endpoint of an OpenAI-compatible server (vLLM, Ollama, llama.cpp), e.g.
    http://127.0.0.1:8001/v1 (default: the backend's own service)."""
    features: str = "0:100"
    """Features to process: ids and ranges (0:200,512), random:N (with --seed), top-density:N."""
    seed: int = 0
    """Seed of random:N feature samples and of sampled examples."""
    cache: str = ""
    """Call cache (SQLite): every call's answer, so a rerun pays nothing twice (default:
    llm_cache.sqlite next to the feature store)."""
    replay_only: bool = False
    """Answer from the call cache alone; a call it does not hold is an error, nothing is sent."""
    plan: bool = False
    """Print the calls, tokens and estimated cost of the run, spend nothing, and stop."""
    budget_usd: float = 0.0
    """Stop cleanly before spending more than this many US dollars (0: no limit)."""
    prices: str = ""
    """JSON file of prices per million tokens, {"model": {"input": 0.15, "output": 0.6}},
    overriding the built-in table."""
    max_concurrency: int = 4
    """Calls in flight at once (the local backend runs one at a time)."""
    requests_per_minute: int = 0
    """Rate limit on requests (0: none)."""
    tokens_per_minute: int = 0
    """Rate limit on prompt + completion tokens (0: none)."""
    timeout: float = 120.0
    """Seconds one call may take before it is retried."""
    max_retries: int = 6
    """Retries of a call on 429, 5xx, timeouts and unreachable endpoints (exponential backoff
    with jitter)."""
    progress: bool = True
    """Show a progress bar with features/s and spend."""

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.backend != "local" and not self.model:
            raise ValueError(f"--model is required with --backend {self.backend}")
        for name in ("budget_usd", "requests_per_minute", "tokens_per_minute", "max_retries"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {self.max_concurrency}")
        if self.timeout <= 0:
            raise ValueError(f"timeout must be positive, got {self.timeout}")


@dataclass
class ExplainConfig(LLMOptions):
    prompt_version: str = "explain-v1"
    """Explainer prompt (a file in monoscope/interpret/prompts/), stored with each explanation."""
    with_logits: bool = True
    """Show the explainer the feature's top direct-logit tokens as well as its examples."""
    overwrite: bool = False
    """Explain again features that already have an explanation from this explainer and prompt."""


@dataclass
class ScoreConfig(LLMOptions):
    scorers: str = "detection,fuzzing"
    """Scorers to run, comma-separated: detection, fuzzing, simulation, embedding."""
    explainer: str = ""
    """Whose explanations to score, as 'backend:model' (default: each feature's newest)."""
    hard_negatives: int = 10
    """Non-activating windows from decoder neighbours added to detection's negatives, each
    checked silent by encoding it again (0: none; needs the SAE and activation store)."""
    max_activating: int = 0
    """Held-out activating windows a scorer uses per feature, spread over the activation
    intervals (0: all the store holds out, 30 with analyze's defaults)."""
    max_non_activating: int = 0
    """Non-activating windows per feature, non-firing and hard negatives (0: all)."""
    answers: str = "auto"
    """How detection and fuzzing read the judge: text (a list of 0/1 for a batch of windows),
    logprobs (one window a call, the answer and its probability from the first token's
    logprobs), auto (logprobs where the backend has them)."""
    overwrite: bool = False
    """Score again what this judge already scored."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_answers(self.answers)
        if self.max_activating < 0 or self.max_non_activating < 0:
            raise ValueError("max_activating and max_non_activating must be >= 0")
        unknown = set(self.scorer_list()) - set(SCORERS)
        if unknown or not self.scorer_list():
            raise ValueError(f"--scorers takes {', '.join(SCORERS)}; got {self.scorers!r}")
        if self.hard_negatives < 0:
            raise ValueError(f"hard_negatives must be >= 0, got {self.hard_negatives}")

    def scorer_list(self) -> list[str]:
        return [s.strip() for s in self.scorers.split(",") if s.strip()]


@dataclass
class SpecificityConfig(LLMOptions):
    features: str = "random:50"
    """Features to grade: ids and ranges (0:200,512), random:N (with --seed), top-density:N.
    The paper grades a random sample."""
    out: str = ""
    """Report folder: specificity.json and specificity.png (default: specificity/ next to the
    feature store)."""
    explainer: str = ""
    """Whose explanations to grade: an explainer name 'backend:model' of the store's
    explanations table (default: each feature's latest ok explanation, features.explanation)."""
    per_interval: int = 0
    """Windows graded per activation interval and feature, a seeded sample (0: all the store
    has: top and quantile examples in their intervals, the non-firing ones)."""
    plot: bool = True
    """Write the stacked histogram PNG (needs matplotlib: pip install 'monoscope[plots]')."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.per_interval < 0:
            raise ValueError(f"per_interval must be >= 0, got {self.per_interval}")

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path(self.db).with_name("specificity")


def neuron_site(layer: int) -> str:
    """The site of a layer's MLP neurons (after the nonlinearity and the gating product)."""
    return f"blocks.{layer}.mlp.hook_post"


@dataclass
class NeuronsConfig:
    model: str = "smollm2-135m"
    """Model: a built-in name (smollm2-135m), a local folder, or a Hugging Face hub id."""
    layer: int = 15
    """Layer whose MLP neurons (site blocks.LAYER.mlp.hook_post) are the dictionary."""
    corpus: str = "builtin"
    """Corpus: 'builtin', a .txt/.jsonl/.parquet file or folder, or hf:DATASET."""
    tokens: int = 200_000
    """Number of tokens to harvest and analyse."""
    out: str = "runs/demo/neurons"
    """Output folder: acts/ (activation store), sae/ (the identity dictionary), features.db."""
    context: int = 128
    """Tokens per packed context, BOS included (the SAE's store's, to compare on the same
    text)."""
    dtype: str = "bfloat16"
    """Storage dtype of the activations: float32, bfloat16 (bf16) or float16 (fp16)."""
    seed: int = 0
    """Seed of the corpus document order and of analyze's random samples."""
    signs: str = "positive"
    """Which side of each signed gate×up unit is a feature: positive (one feature per neuron,
    max(x, 0)), or both (2 × width features: max(x, 0), then max(-x, 0))."""
    batch_size: int = 4096
    """Activation rows per analyze batch."""
    logit_tokens: int = 10
    """Top and bottom tokens kept per neuron by direct logit effect."""
    overwrite: bool = False
    """Replace an existing activation store and feature store under --out."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        if self.layer < 0:
            raise ValueError(f"layer must be >= 0, got {self.layer}")
        if self.signs not in SIGNS:
            raise ValueError(f"signs must be one of {', '.join(SIGNS)}, got {self.signs!r}")
        for name in ("tokens", "batch_size", "logit_tokens"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def site(self) -> str:
        return neuron_site(self.layer)


@dataclass
class CompareNeuronsConfig:
    features_db: str = "runs/demo/features.db"
    """The SAE's feature store (its SAE and activation store are found from its meta)."""
    neurons_db: str = "runs/demo/neurons/features.db"
    """The neurons' feature store, written by `monoscope neurons`."""
    out: str = "runs/demo/features_vs_neurons"
    """Report folder."""
    n_features: int = 500
    """Random live SAE features whose max correlation with the neurons is measured."""
    n_scored: int = 100
    """Features and neurons, each a random sample of those scored, compared on scores."""
    seed: int = 0
    """Seed of both random samples."""
    threshold: float = 0.3
    """The max |r| at or below which a feature has no neuron counterpart (the paper's 0.3)."""
    bins: int = 20
    """Bins of the max |r| histogram over [0, 1]."""
    model: str = ""
    """Model to run (default: the feature store's)."""
    sae: str = ""
    """SAE folder (default: the one the feature store records, or the folder of that name
    next to the feature store)."""
    acts: str = ""
    """The SAE's activation store, whose tokens are re-run (default: as for --sae)."""
    max_tokens: int = 0
    """Correlate over at most this many tokens of the store (0: all)."""
    batch_size: int = 4096
    """Tokens per forward pass (whole contexts, at least one)."""
    specificity_features: str = ""
    """Folder of a `monoscope specificity` report on the SAE's features (specificity.json)."""
    specificity_neurons: str = ""
    """Folder of a `monoscope specificity` report on the neurons' store."""
    plots: bool = True
    """Write the PNG figures (needs matplotlib: pip install 'monoscope[plots]')."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        for name in ("n_features", "n_scored", "bins", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0, got {self.max_tokens}")
        if not 0 < self.threshold < 1:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")


@dataclass
class LLMServerConfig:
    model: str = "smollm2-135m"
    """Model the server answers with (the local backend: a built-in name, folder or hub id)."""
    host: str = "127.0.0.1"
    """Address to listen on (loopback by default: anyone who can reach it can use the model)."""
    port: int = 8001
    """Port to listen on; clients use --base-url http://127.0.0.1:PORT/v1."""
    api_key_env: str = ""
    """Name of an environment variable holding a key that clients must send (empty: no key)."""
