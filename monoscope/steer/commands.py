"""The `monoscope steer`, `attribute` and `features-for` commands: `run_*` functions returning the
JSON results (their configs are in config.py; runner.py's `run` picks one by config)."""

from __future__ import annotations

import sys
from pathlib import Path

from monoscope.artifacts import atomic_write_json
from monoscope.models import LanguageModel
from monoscope.runtime import resolve_device
from monoscope.sae import SparseAutoencoder
from monoscope.steer.attribution import attribute
from monoscope.steer.config import AttributeConfig, FeaturesForConfig, SteerConfig
from monoscope.steer.generation import Sampling, compare
from monoscope.steer.intervention import check_sae, same_model
from monoscope.steer.maxact import MaxActivations, from_activation_store, from_feature_store
from monoscope.steer.search import contrast, features_for_span
from monoscope.steer.spec import (
    SteeringError,
    SteeringSpec,
    parse_feature,
    parse_value,
    with_value,
)


def load(
    sae_dirs: list[str], model: str | None, device: str = "auto"
) -> tuple[LanguageModel, dict]:
    """The model and {folder: SAE}, on `device` (see `resolve_device`); the model defaults to
    the one the SAEs name."""
    from monoscope.models import load_model
    from monoscope.sae import load_sae

    on = resolve_device(device)  # a device that is not there fails before any load
    saes = {d: load_sae(d, device=on) for d in sae_dirs}
    for key, sae in saes.items():  # before loading a model in vain
        if model is not None and sae.cfg.model is not None and not same_model(sae.cfg.model, model):
            raise SteeringError(
                f"SAE {key!r} was trained on model {sae.cfg.model!r}, not {model!r}"
            )
    if model is None:
        named = {s.cfg.model for s in saes.values()}
        model = next(iter(named)) if len(named) == 1 else None
        if model is None:
            raise SteeringError(
                f"the SAEs name models {sorted(map(str, named))}: pass --model to choose one"
            )
    lm = load_model(model, device=on)
    for key, sae in saes.items():
        check_sae(lm, sae, key)
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
    labels: list[str | None] = [f"{v:g}{'x' if relative else ''}" for v, relative in sweep]
    return spec, [with_value(spec, v, relative) for v, relative in sweep], labels


def run_steer(cfg: SteerConfig) -> dict:
    """Steered and unsteered continuations as `cfg` says; the `compare` result (also written
    to cfg.json_out)."""
    spec, specs, labels = _specs(cfg)
    lm, saes = load(spec.saes(), cfg.model, cfg.device)
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
    lm, saes = load([cfg.sae], cfg.model, cfg.device)
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
    lm, saes = load([cfg.sae], cfg.model, cfg.device)
    sae: SparseAutoencoder = saes[cfg.sae]
    if cfg.prompt is not None:
        result = {"kind": "span", **features_for_span(lm, sae, cfg.prompt, top=cfg.top)}
    else:
        positive, negative = _prompts(cfg.positive), _prompts(cfg.negative)
        result = {"kind": "contrast", **contrast(lm, sae, positive, negative, cfg.top, cfg.reduce)}
    if cfg.json_out:
        atomic_write_json(cfg.json_out, result)
    return result
