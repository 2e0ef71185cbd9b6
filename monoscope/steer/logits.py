"""The tokens a feature's decoder direction raises most, directly (through the final norm's
weight and the unembedding; see monoscope/analyze/logits.py for the approximation)."""

from __future__ import annotations

import torch

from monoscope.models import LanguageModel
from monoscope.sae import SparseAutoencoder
from monoscope.steer.intervention import decoder_directions
from monoscope.steer.prompts import token_texts
from monoscope.steer.spec import SteeringError


def top_logit_tokens(
    lm: LanguageModel, sae: SparseAutoencoder, features: list[int], k: int = 5
) -> dict[int, list[dict]]:
    """{feature: [{"id", "text", "effect"}, ...]}: the k tokens with the largest direct logit
    effect of each feature (per unit length of its decoder direction). Needs an SAE whose
    site is as wide as the residual stream."""
    from monoscope.analyze.logits import logit_effects

    if sae.cfg.d_in != lm.d_model:
        raise SteeringError(
            f"direct logit effects need a residual-stream SAE (width {lm.d_model}), this SAE "
            f"reads {sae.cfg.d_in}-wide activations at {sae.cfg.site}"
        )
    directions = decoder_directions(sae, torch.tensor(features)).cpu()
    ids, effects, _, _ = logit_effects(directions, lm, k)
    out = {}
    for feature, i, e in zip(features, ids.tolist(), effects.tolist(), strict=True):
        out[feature] = [
            {"id": t, "text": s, "effect": v}
            for t, s, v in zip(i, token_texts(lm, i), e, strict=True)
        ]
    return out
