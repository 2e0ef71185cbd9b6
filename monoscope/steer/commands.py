"""The `monoscope steer`, `attribute` and `features-for` commands: configs (their field docs are
the --help text), `run_*` functions returning the JSON results, and plain-text reports."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from monoscope.artifacts import atomic_write_json
from monoscope.models import LanguageModel
from monoscope.sae import SparseAutoencoder
from monoscope.steer.attribution import METRICS, attribute
from monoscope.steer.generation import Sampling, compare
from monoscope.steer.intervention import check_sae, same_model
from monoscope.steer.maxact import (
    DEFAULT_SAMPLE_TOKENS,
    MaxActivations,
    from_activation_store,
    from_feature_store,
)
from monoscope.steer.search import contrast, features_for_span
from monoscope.steer.spec import (
    MODES,
    POSITIONS,
    SteeringError,
    SteeringSpec,
    parse_feature,
    parse_value,
    with_value,
)


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

    def __post_init__(self) -> None:
        if (self.prompt is None) == (not (self.positive or self.negative)):
            raise SteeringError(
                "give either --prompt with a [[marked]] span, or --positive and --negative prompts"
            )


def load(sae_dirs: list[str], model: str | None) -> tuple[LanguageModel, dict]:
    """The model and {folder: SAE}; the model defaults to the one the SAEs name."""
    from monoscope.models import load_model
    from monoscope.sae import load_sae

    saes = {d: load_sae(d) for d in sae_dirs}
    for key, sae in saes.items():  # before loading a model in vain
        if model is not None and sae.cfg.model is not None and not same_model(sae.cfg.model, model):
            raise SteeringError(
                f"SAE {key!r} was trained on model {sae.cfg.model!r}, not {model!r}"
            )
    if model is None:
        named = {s.cfg.model for s in saes.values()}
        if None in named or len(named) != 1:
            raise SteeringError(
                f"the SAEs name models {sorted(map(str, named))}: pass --model to choose one"
            )
        model = named.pop()
    lm = load_model(model)
    for key, sae in saes.items():
        check_sae(lm, sae, key)
        saes[key] = sae.to(lm.device)
    return lm, saes


def _max_acts(cfg: SteerConfig, saes: dict) -> dict[str, MaxActivations] | None:
    if cfg.features_db:
        return {k: from_feature_store(cfg.features_db, s, k) for k, s in saes.items()}
    if cfg.acts:
        return {k: from_activation_store(cfg.acts, s, cfg.sample_tokens) for k, s in saes.items()}
    found = {k: _store_beside(k, s) for k, s in saes.items()}
    return {k: m for k, m in found.items() if m is not None} or None


def _store_beside(sae_dir: str, sae: SparseAutoencoder) -> MaxActivations | None:
    """Max activations from the features.db next to the SAE folder (`monoscope demo`'s layout:
    runs/demo/sae and runs/demo/features.db), if there is one and it was built for this SAE."""
    path = Path(sae_dir).parent / "features.db"
    if not path.is_file():
        return None
    try:
        found = from_feature_store(path, sae, sae_dir)
    except SteeringError as err:
        print(f"(not using {path} for max activations: {err})", file=sys.stderr)
        return None
    print(f"(max activations of {sae_dir} from {path})", file=sys.stderr)
    return found


def _specs(cfg: SteerConfig) -> tuple[SteeringSpec, list[SteeringSpec], list[str | None]]:
    """The base spec, and the specs (with labels) of each run: one, or one per sweep value."""
    sweep = [parse_value(v) for v in cfg.sweep.split(",")] if cfg.sweep else None
    if cfg.spec:
        spec = SteeringSpec.loads(Path(cfg.spec).read_text())
    else:
        if sweep and any("=" in f for f in cfg.features):
            raise SteeringError("with --sweep give features as IDs only (--feature 123)")
        default = sweep[0] if sweep else None
        spec = SteeringSpec(
            tuple(parse_feature(f, cfg.mode, cfg.sae, cfg.positions, default) for f in cfg.features)
        )
    if not sweep:
        return spec, [spec], [None]
    labels = [f"{v:g}{'x' if relative else ''}" for v, relative in sweep]
    return spec, [with_value(spec, v, relative) for v, relative in sweep], labels


def run_steer(cfg: SteerConfig) -> dict:
    """Steered and unsteered continuations as `cfg` says; the `compare` result (also written
    to cfg.json_out)."""
    spec, specs, labels = _specs(cfg)
    lm, saes = load(spec.saes(), cfg.model)
    needs_max = any(s.relative for s in specs)
    max_acts = _max_acts(cfg, saes) if needs_max else None
    sampling = Sampling(cfg.max_new_tokens, cfg.temperature, cfg.seed, cfg.n)
    result = compare(
        lm, saes, specs, cfg.prompt, sampling, max_acts, labels, cfg.chat, cfg.top_tokens
    )
    if cfg.json_out:
        atomic_write_json(cfg.json_out, result)
    return result


def run_attribute(cfg: AttributeConfig) -> dict:
    lm, saes = load([cfg.sae], cfg.model)
    result = attribute(
        lm,
        saes[cfg.sae],
        cfg.prompt,
        cfg.target,
        cfg.metric,
        cfg.contrast,
        cfg.top,
        cfg.ablate,
        chat=cfg.chat,
    )
    if cfg.json_out:
        atomic_write_json(cfg.json_out, result)
    return result


def _prompts(values: list[str]) -> list[str]:
    """Prompts from the command line; '@FILE' expands to the file's non-empty lines."""
    out = []
    for value in values:
        if value.startswith("@"):
            path = Path(value[1:])
            if not path.is_file():
                raise SteeringError(f"prompt file {path} does not exist")
            out += [line for line in path.read_text().splitlines() if line.strip()]
        else:
            out.append(value)
    return out


def run_features_for(cfg: FeaturesForConfig) -> dict:
    lm, saes = load([cfg.sae], cfg.model)
    sae: SparseAutoencoder = saes[cfg.sae]
    if cfg.prompt is not None:
        result = {"kind": "span", **features_for_span(lm, sae, cfg.prompt, top=cfg.top)}
    else:
        positive, negative = _prompts(cfg.positive), _prompts(cfg.negative)
        result = {"kind": "contrast", **contrast(lm, sae, positive, negative, cfg.top, cfg.reduce)}
    if cfg.json_out:
        atomic_write_json(cfg.json_out, result)
    return result
