"""Direct logit effects of decoder directions, and the vocabulary's token texts.

The effect of feature i on the logits, ignoring every later layer (Scaling Monosemanticity's
"output" view; label it "direct"): the unit decoder direction d_i through a linear stand-in for
the final norm and the unembedding,

    effect_i = W_U (w ⊙ π(d_i))

where w is the final norm's elementwise weight and π removes the mean for LayerNorm (identity
for RMSNorm); the norm's division by the residual's scale, and its bias, are the same for every
direction and left out. So effects are per unit length of d_i in the normalised residual stream:
their ranking is the point, their size compares features of one model.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from monoscope.analyze.neighbours import unit_rows
from monoscope.models import LanguageModel
from monoscope.models.sites import family_of

# The final norm's module path, per site-table family (see monoscope/models/site_tables.py).
FINAL_NORMS = {
    "llama": "model.norm",
    "gpt2": "transformer.ln_f",
    "gpt_neox": "gpt_neox.final_layer_norm",
}

BLOCK_ELEMENTS = 1 << 24
"""Logits computed at a time (64 MiB of float32), whatever the vocabulary and feature counts."""


def vocab_size(lm: LanguageModel) -> int:
    """Token ids the tokenizer can decode that the unembedding scores."""
    return min(len(lm.tokenizer), lm.model.get_output_embeddings().weight.shape[0])


def direct_map(lm: LanguageModel) -> tuple[Tensor, bool, Tensor]:
    """(norm weight [d], whether to remove the mean, unembedding W_U [vocab, d]), float32."""
    norm = lm.model.get_submodule(FINAL_NORMS[family_of(lm.model).name])
    centre = isinstance(norm, nn.LayerNorm)
    unembed = lm.model.get_output_embeddings().weight[: vocab_size(lm)]
    weight = norm.get_parameter("weight").detach().float().cpu()
    return weight, centre, unembed.detach().float().cpu()


@torch.no_grad()
def logit_effects(directions: Tensor, lm: LanguageModel, n: int) -> tuple[Tensor, ...]:
    """Top and bottom n tokens by direct logit effect of each row of directions [F, d]:
    (top_ids, top_effects, bottom_ids, bottom_effects), each [F, n], top largest first,
    bottom smallest first."""
    weight, centre, unembed = direct_map(lm)
    n = min(n, unembed.shape[0])
    u = unit_rows(directions)
    if centre:
        u = u - u.mean(dim=-1, keepdim=True)
    u = u * weight
    rows = max(1, BLOCK_ELEMENTS // unembed.shape[0])
    top, bottom = [], []
    for block in u.split(rows):
        effects = block @ unembed.T  # [rows, vocab]
        top.append(effects.topk(n, dim=1))
        bottom.append(effects.topk(n, dim=1, largest=False))
    return (
        torch.cat([t.indices for t in top]),
        torch.cat([t.values for t in top]),
        torch.cat([b.indices for b in bottom]),
        torch.cat([b.values for b in bottom]),
    )


def token_texts(tokenizer: object, n: int) -> list[str]:
    """The decoded text of each token id 0..n-1 on its own."""
    return tokenizer.batch_decode([[i] for i in range(n)])  # type: ignore[attr-defined]
