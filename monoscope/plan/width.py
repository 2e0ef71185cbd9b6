"""The width d of the activations at a site, found without loading a model's weights.

`--d-model` wins; the built-in model's shape is known here; a local folder or a hub id is read
through its config alone (transformers.AutoConfig). The site's name is checked for its form and,
where the layer count is known, its layer; `mlp.hook_post` (the MLP's neurons) is the MLP's
hidden width, every other site the residual stream's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from monoscope.models.hub import ModelNotFoundError, first_line, hub_load_options
from monoscope.models.sites import SITE_KINDS, SITE_PATTERN, UnknownSiteError


@dataclass(frozen=True)
class ModelShape:
    d_model: int
    n_layers: int
    d_mlp: int
    """Width of the MLP's hidden layer (the neurons read at mlp.hook_post)."""


BUILTIN_SHAPES: dict[str, ModelShape] = {  # one per name in BUILTIN_MODELS (tested)
    # SmolLM2-135M-Instruct's config.json: hidden_size, num_hidden_layers, intermediate_size.
    "smollm2-135m": ModelShape(d_model=576, n_layers=30, d_mlp=1536),
}


@dataclass(frozen=True)
class Width:
    d: int
    source: str
    """How d was found, for the report: '--d-model', 'built-in model', 'config of ...'."""


def site_width(model: str, site: str, d_model: int | None = None) -> Width:
    """d of `site` in `model` (see the module's note); ValueError for a malformed site, a layer
    out of range, or a model whose config cannot be read (suggesting --d-model)."""
    match = SITE_PATTERN.match(site)
    if not match:
        kinds = ", ".join(SITE_KINDS)
        raise UnknownSiteError(f"unknown site {site!r}: sites are blocks.{{L}}.{{{kinds}}}")
    if d_model is not None:
        return Width(d_model, "--d-model")
    shape, source = model_shape(model)
    layer, kind = int(match.group(1)), match.group(2)
    if layer >= shape.n_layers:
        raise UnknownSiteError(
            f"site {site!r}: layer {layer} out of range, {model} has layers 0..{shape.n_layers - 1}"
        )
    return Width(shape.d_mlp if kind == "mlp.hook_post" else shape.d_model, source)


def model_shape(model: str) -> tuple[ModelShape, str]:
    """(the model's widths and depth, where they were read)."""
    if model in BUILTIN_SHAPES:
        return BUILTIN_SHAPES[model], "built-in model"
    from transformers import AutoConfig

    hint = "give the width with --d-model (e.g. --d-model 4096) to plan without it"
    try:
        options = {} if Path(model).is_dir() else hub_load_options(model)[0]
        config = AutoConfig.from_pretrained(model, **options)
    except (ModelNotFoundError, OSError, ValueError) as err:
        raise ModelNotFoundError(
            f"cannot read {model}'s config ({first_line(err)}): {hint}"
        ) from None
    try:
        d_model, n_layers = int(config.hidden_size), int(config.num_hidden_layers)
    except AttributeError:
        raise ModelNotFoundError(
            f"{model}'s config ({type(config).__name__}) names no hidden_size or "
            f"num_hidden_layers: {hint}"
        ) from None
    # Llama-like configs name the MLP's width intermediate_size; GPT-2's n_inner (None: 4d).
    d_mlp = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None)
    return ModelShape(d_model, n_layers, int(d_mlp or 4 * d_model)), f"config of {model}"
