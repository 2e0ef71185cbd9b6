"""Where each TransformerLens/SAELens-named site lives in a Hugging Face module tree.

Data, not code: one entry per architecture family. Module paths are relative to the layer
module (`{layers}.{L}`); `output` means "the module's output (first element if a tuple)",
`input` means "the module's first input". Only families whose blocks add the attention and MLP
outputs straight into the residual stream belong here (no post-norms, as in Gemma 2).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SiteRule:
    """How to read one kind of site: which module, and its input or its output."""

    module: str  # path below the layer module; "" is the layer itself
    where: str  # "input" or "output"


@dataclass(frozen=True)
class Family:
    """The module layout of one architecture family."""

    name: str
    layers: str  # dotted path from the *ForCausalLM module to the ModuleList of blocks
    rules: dict[str, SiteRule]


def _rules(attn: str, mlp: str, mlp_out_proj: str) -> dict[str, SiteRule]:
    return {
        "hook_resid_pre": SiteRule("", "input"),
        "hook_resid_post": SiteRule("", "output"),
        "hook_attn_out": SiteRule(attn, "output"),
        "hook_mlp_out": SiteRule(mlp, "output"),
        # The neurons: the input of the MLP's output projection, after the nonlinearity
        # (and after the gating product in gated MLPs).
        "mlp.hook_post": SiteRule(f"{mlp}.{mlp_out_proj}", "input"),
    }


FAMILIES: dict[str, Family] = {
    "llama": Family("llama", "model.layers", _rules("self_attn", "mlp", "down_proj")),
    "gpt2": Family("gpt2", "transformer.h", _rules("attn", "mlp", "c_proj")),
    "gpt_neox": Family("gpt_neox", "gpt_neox.layers", _rules("attention", "mlp", "dense_4h_to_h")),
}

# Hugging Face `config.model_type` -> family. Llama-like decoders share one layout.
MODEL_TYPES: dict[str, str] = {
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "llama",
    "gpt2": "gpt2",
    "gpt_neox": "gpt_neox",
}
