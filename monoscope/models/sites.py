"""Site names (`blocks.{L}.hook_resid_post` ...) resolved onto a model's modules."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import nn

from monoscope.models.site_tables import FAMILIES, MODEL_TYPES, Family

if TYPE_CHECKING:
    from transformers import PreTrainedModel

SITE_KINDS = ("hook_resid_pre", "hook_attn_out", "mlp.hook_post", "hook_mlp_out", "hook_resid_post")
SITE_PATTERN = re.compile(r"^blocks\.(\d+)\.(" + "|".join(map(re.escape, SITE_KINDS)) + r")$")


class UnknownSiteError(ValueError):
    """A site name that does not exist in this model."""


class UnsupportedModelError(ValueError):
    """A model whose architecture has no site table."""


@dataclass(frozen=True)
class Site:
    """A resolved site: the module to hook and whether to read its input or its output."""

    name: str
    layer: int
    kind: str  # e.g. "hook_resid_post"
    module: nn.Module
    where: str  # "input" or "output"
    width: int


def family_of(model: PreTrainedModel) -> Family:
    model_type = getattr(model.config, "model_type", None)
    if model_type not in MODEL_TYPES:
        raise UnsupportedModelError(
            f"no site table for model_type {model_type!r}; supported: {sorted(MODEL_TYPES)}"
        )
    return FAMILIES[MODEL_TYPES[model_type]]


def input_width(module: nn.Module) -> int:
    """Width of the input of a projection (nn.Linear, or GPT-2's transposed Conv1D)."""
    if isinstance(module, nn.Linear):
        return module.in_features
    return int(module.get_parameter("weight").shape[0])  # transformers' Conv1D stores [in, out]


class SiteResolver:
    """Maps site names of one model onto its modules; lists every site with its width."""

    def __init__(self, model: PreTrainedModel) -> None:
        self.family = family_of(model)
        layers = model.get_submodule(self.family.layers)
        if not isinstance(layers, nn.ModuleList):
            raise UnsupportedModelError(
                f"{self.family.layers} of this {type(model).__name__} is a "
                f"{type(layers).__name__}, not the list of its layers"
            )
        self.layers = layers
        self.n_layers = len(self.layers)
        self.d_model = int(model.config.hidden_size)

    def resolve(self, name: str) -> Site:
        match = SITE_PATTERN.match(name)
        if not match:
            raise UnknownSiteError(f"unknown site {name!r}; {self.describe_valid()}")
        layer, kind = int(match.group(1)), match.group(2)
        if layer >= self.n_layers:
            raise UnknownSiteError(
                f"site {name!r}: layer {layer} out of range, the model has layers "
                f"0..{self.n_layers - 1}; {self.describe_valid()}"
            )
        rule = self.family.rules[kind]
        block = self.layers[layer]
        module = block.get_submodule(rule.module) if rule.module else block
        width = input_width(module) if kind == "mlp.hook_post" else self.d_model
        return Site(name, layer, kind, module, rule.where, width)

    def all_sites(self) -> list[Site]:
        return [
            self.resolve(f"blocks.{layer}.{kind}")
            for layer in range(self.n_layers)
            for kind in SITE_KINDS
        ]

    def describe_valid(self) -> str:
        kinds = ", ".join(SITE_KINDS)
        return f"valid sites are blocks.{{L}}.{{{kinds}}} for L in 0..{self.n_layers - 1}"
