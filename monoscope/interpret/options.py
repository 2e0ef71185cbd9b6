"""`LLMOptions`: how the interpret commands reach an LLM and what they may spend; the field
docstrings are the CLI help of `explain`, `score` and `specificity`, which inherit them."""

from __future__ import annotations

from dataclasses import dataclass

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
