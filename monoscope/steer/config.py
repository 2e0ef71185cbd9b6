"""The steer stage's command configs: `monoscope steer`, `attribute` and `features-for`. The field
docstrings are the CLI help; `monoscope.steer.run(cfg)` runs any of them."""

from __future__ import annotations

from dataclasses import dataclass, field

from monoscope.steer.attribution import METRICS
from monoscope.steer.maxact import DEFAULT_SAMPLE_TOKENS
from monoscope.steer.spec import MODES, POSITIONS, SteeringError


@dataclass
class SteerConfig:
    sae: str = "runs/demo/sae"
    """SAE folder (monoscope, SAELens or sparsify format)."""
    features: list[str] = field(default_factory=list)
    """Feature to steer as ID=VALUE: 123=10x (10 times its max activation) or 45=-5 (an
    activation); repeat for several. The ID alone with --sweep or --mode ablate."""
    prompt: str = ""
    """Prompt to continue (BOS is prepended, as in the SAE's training contexts)."""
    mode: str = "clamp"
    """clamp (set the feature, error term kept), add (VALUE along the unit decoder direction),
    multiply (factor) or ablate (clamp to 0)."""
    positions: str = "all"
    """Token positions to steer: all, prompt or generated."""
    n: int = 1
    """Continuations per run (the same seeds steered and unsteered)."""
    sweep: str | None = None
    """Comma-separated strengths, one steered run each for every --feature, e.g. 0,2x,5x,10x
    (write --sweep=-2x,0,2x when the first is negative)."""
    max_new_tokens: int = 40
    """Tokens to generate."""
    temperature: float = 0.7
    """Sampling temperature; 0 decodes greedily."""
    seed: int = 0
    """Random seed of the sampling (the same for every run)."""
    features_db: str | None = None
    """Feature store (monoscope analyze) giving each feature's max activation for 10x values
    (default: the features.db beside the SAE folder, if it was built for that SAE)."""
    acts: str | None = None
    """Activation store to estimate max activations from (a sample of its train split)."""
    sample_tokens: int = DEFAULT_SAMPLE_TOKENS
    """Tokens of --acts encoded to estimate max activations."""
    model: str | None = None
    """Model to steer (default: the model named in the SAE's config)."""
    spec: str | None = None
    """Steering-spec JSON file (edits keyed by SAE folder, several SAEs allowed) instead of
    --sae and --feature."""
    chat: bool = False
    """Wrap the prompt in the tokenizer's chat template as a user turn."""
    top_tokens: int = 5
    """Top direct-logit tokens per feature whose log-probability shift is reported."""
    json_out: str | None = None
    """Write the full result (texts, per-token activations and KL) to this JSON file."""
    device: str = "auto"
    """Device the model and the SAE run on: auto (CUDA when present, else the CPU), cpu, cuda,
    cuda:N or mps."""

    def __post_init__(self) -> None:
        if not self.prompt:
            raise SteeringError("give a --prompt")
        if self.mode not in MODES:
            raise SteeringError(f"--mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.positions not in POSITIONS:
            raise SteeringError(f"--positions must be one of {', '.join(POSITIONS)}")
        if self.spec is None and not self.features:
            raise SteeringError("give at least one --feature ID=VALUE (or a --spec file)")
        if self.spec is not None and self.features:
            raise SteeringError("give --feature or --spec, not both")
        if self.features_db and self.acts:
            raise SteeringError("give --features-db or --acts for max activations, not both")


@dataclass
class AttributeConfig:
    sae: str = "runs/demo/sae"
    """SAE folder (monoscope, SAELens or sparsify format)."""
    prompt: str = ""
    """Prompt whose next token is explained."""
    target: str | None = None
    """Target token, e.g. ' Paris' (must be a single token; default: the model's top token)."""
    metric: str = "logprob"
    """logprob (of the target), logit_diff (target minus --contrast logit) or logit_mean
    (target minus the mean logit)."""
    contrast: str | None = None
    """Contrast token for --metric logit_diff (a single token)."""
    top: int = 20
    """Rows of the table: (feature, position) pairs by |attribution|."""
    ablate: int | None = None
    """Pairs to ablate one at a time, by |attribution| (default: --top; 0: none)."""
    model: str | None = None
    """Model (default: the model named in the SAE's config)."""
    chat: bool = False
    """Wrap the prompt in the tokenizer's chat template as a user turn."""
    json_out: str | None = None
    """Write the full result (with each position's top features) to this JSON file."""
    device: str = "auto"
    """Device the model and the SAE run on: auto (CUDA when present, else the CPU), cpu, cuda,
    cuda:N or mps."""

    def __post_init__(self) -> None:
        if not self.prompt:
            raise SteeringError("give a --prompt")
        if self.metric not in METRICS:
            raise SteeringError(f"--metric must be one of {', '.join(METRICS)}")
        if self.top < 1 or (self.ablate is not None and self.ablate < 0):
            raise SteeringError("--top must be at least 1 and --ablate at least 0")


@dataclass
class FeaturesForConfig:
    sae: str = "runs/demo/sae"
    """SAE folder (monoscope, SAELens or sparsify format)."""
    prompt: str | None = None
    """A prompt with one span marked by [[ ]]: the features most active on it."""
    positive: list[str] = field(default_factory=list)
    """A prompt of the concept (repeat; @FILE reads one prompt per line)."""
    negative: list[str] = field(default_factory=list)
    """A prompt without the concept (repeat; @FILE reads one prompt per line)."""
    reduce: str = "max"
    """How a prompt scores a feature in --positive/--negative mode: max or mean over tokens."""
    top: int = 20
    """Features to list."""
    model: str | None = None
    """Model (default: the model named in the SAE's config)."""
    json_out: str | None = None
    """Write the result to this JSON file."""
    device: str = "auto"
    """Device the model and the SAE run on: auto (CUDA when present, else the CPU), cpu, cuda,
    cuda:N or mps."""

    def __post_init__(self) -> None:
        if (self.prompt is None) == (not (self.positive or self.negative)):
            raise SteeringError(
                "give either --prompt with a [[marked]] span, or --positive and --negative prompts"
            )
