"""Finding features for a concept from prompts (Scaling Monosemanticity, "how features were
found"; METHODS §10): the features most active on a marked span of one prompt, and the features
that best separate two sets of prompts.

Activations are the SAE's encoding of the model's activations at the SAE's site, BOS excluded.
"""

from __future__ import annotations

import torch
from torch import Tensor

from monoscope.models import LanguageModel
from monoscope.sae import SparseAutoencoder
from monoscope.steer.intervention import check_sae
from monoscope.steer.prompts import bos_id, context_length, encode_prompt, token_texts
from monoscope.steer.spec import SteeringError

OPEN, CLOSE = "[[", "]]"


def split_marked(text: str) -> tuple[str, int, int]:
    """'The [[Golden Gate]] Bridge' -> ('The Golden Gate Bridge', 4, 15): the text without the
    markers and the span's character offsets."""
    start = text.find(OPEN)
    end = text.find(CLOSE, start + len(OPEN)) if start >= 0 else -1
    if start < 0 or end < 0 or text.count(OPEN) != 1 or text.count(CLOSE) != 1:
        raise SteeringError(
            f"mark exactly one span of the prompt with {OPEN} and {CLOSE}, e.g. "
            f"'The {OPEN}Golden Gate{CLOSE} Bridge'; got {text!r}"
        )
    inner = text[start + len(OPEN) : end]
    if not inner.strip():
        raise SteeringError("the marked span is empty")
    clean = text[:start] + inner + text[end + len(CLOSE) :]
    return clean, start, start + len(inner)


@torch.no_grad()
def _encode_tokens(lm: LanguageModel, sae: SparseAutoencoder, ids: Tensor) -> Tensor:
    """f [P, n_features] for ids [1, P] (row 0 zero when it is BOS)."""
    site = check_sae(lm, sae)
    x = lm.capture(ids, [site])[site][0]
    param = next(sae.parameters())
    f = sae.encode(x.to(param.device, param.dtype)).float().cpu()
    bos = bos_id(lm.tokenizer)
    if bos is not None and int(ids[0, 0]) == bos:
        f[0] = 0
    return f


def _tokens_with_offsets(
    lm: LanguageModel, text: str
) -> tuple[Tensor, list[tuple[int, int] | None]]:
    """ids [1, P] (BOS first, as encode_prompt) and each token's character span in `text`
    (BOS: None)."""
    if not getattr(lm.tokenizer, "is_fast", False):
        raise SteeringError("marking a span needs a fast tokenizer (character offsets)")
    enc = lm.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc.input_ids)
    offsets: list[tuple[int, int] | None] = [(o[0], o[1]) for o in enc.offset_mapping]
    bos = bos_id(lm.tokenizer)
    if bos is not None:
        ids, offsets = [bos, *ids], [None, *offsets]
    limit = context_length(lm)
    if limit is not None and len(ids) > limit:
        raise SteeringError(f"the prompt is {len(ids)} tokens, over the context length {limit}")
    return torch.tensor([ids]), offsets


def features_for_span(
    lm: LanguageModel,
    sae: SparseAutoencoder,
    prompt: str,
    span: tuple[int, int] | None = None,
    top: int = 20,
) -> dict:
    """The features most active on a span of `prompt`: marked with [[ ]], or given as
    character offsets `span` = (start, end) into the prompt.

    Ranked by mean activation over the span's tokens. Returns (plain JSON):
      prompt (without markers), tokens [str], span {start, end, text, positions [int]},
      features [{feature, mean, max, fired (span tokens where it fires), mean_outside (mean over
                 the prompt's other tokens, BOS excluded), activations [per span token]}].
    """
    if span is None:
        prompt, start, end = split_marked(prompt)
    else:
        start, end = span
        if not 0 <= start < end <= len(prompt):
            raise SteeringError(f"span {span} is not inside the prompt of {len(prompt)} characters")
    ids, offsets = _tokens_with_offsets(lm, prompt)
    inside = [
        p
        for p, o in enumerate(offsets)
        if o is not None and o[1] > o[0] and o[0] < end and o[1] > start
    ]
    if not inside:
        raise SteeringError(f"no token of the prompt overlaps characters {start}..{end}")
    f = _encode_tokens(lm, sae, ids)
    others = [p for p, o in enumerate(offsets) if o is not None and p not in inside]
    span_f = f[inside]  # [s, n]
    mean = span_f.mean(0)
    outside = f[others].mean(0) if others else torch.zeros_like(mean)
    ranked = mean.argsort(descending=True)[:top]
    best = ranked[mean[ranked] > 0].tolist()
    return {
        "prompt": prompt,
        "tokens": token_texts(lm, ids[0]),
        "span": {"start": start, "end": end, "text": prompt[start:end], "positions": inside},
        "features": [
            {
                "feature": i,
                "mean": float(mean[i]),
                "max": float(span_f[:, i].max()),
                "fired": int((span_f[:, i] > 0).sum()),
                "mean_outside": float(outside[i]),
                "activations": span_f[:, i].tolist(),
            }
            for i in best
        ],
    }


def _per_prompt(lm: LanguageModel, sae: SparseAutoencoder, prompts: list[str], reduce: str):
    """[len(prompts), n_features]: each prompt's max (or mean) activation over its tokens."""
    rows = []
    for text in prompts:
        ids = encode_prompt(lm, text)
        f = _encode_tokens(lm, sae, ids)
        body = f[1:] if ids.shape[1] > 1 and int(ids[0, 0]) == bos_id(lm.tokenizer) else f
        rows.append(body.max(0).values if reduce == "max" else body.mean(0))
    return torch.stack(rows)


def auroc(pos: Tensor, neg: Tensor) -> Tensor:
    """P(a positive prompt scores above a negative one), ties counted half: [features] from
    pos [a, features] and neg [b, features]."""
    greater = (pos[:, None] > neg[None]).float().mean((0, 1))
    ties = (pos[:, None] == neg[None]).float().mean((0, 1))
    return greater + 0.5 * ties


def contrast(
    lm: LanguageModel,
    sae: SparseAutoencoder,
    positive: list[str],
    negative: list[str],
    top: int = 20,
    reduce: str = "max",
) -> dict:
    """The features that best separate two sets of prompts: each prompt scored by the
    feature's max (or mean) activation over its tokens, features ranked by mean score on the
    positive set minus the negative set.

    Returns (plain JSON):
      n_positive, n_negative, reduce,
      features [{feature, difference, mean_positive, mean_negative, fired_positive,
                 fired_negative (prompts where it fires anywhere), auroc}].
    """
    if not positive or not negative:
        raise SteeringError("give at least one positive and one negative prompt")
    if reduce not in ("max", "mean"):
        raise SteeringError(f"reduce must be max or mean, got {reduce!r}")
    pos, neg = _per_prompt(lm, sae, positive, reduce), _per_prompt(lm, sae, negative, reduce)
    difference = pos.mean(0) - neg.mean(0)
    best = difference.argsort(descending=True)[:top]
    best = best[difference[best] > 0]
    scores = auroc(pos[:, best], neg[:, best])
    return {
        "n_positive": len(positive),
        "n_negative": len(negative),
        "reduce": reduce,
        "features": [
            {
                "feature": int(i),
                "difference": float(difference[i]),
                "mean_positive": float(pos[:, i].mean()),
                "mean_negative": float(neg[:, i].mean()),
                "fired_positive": int((pos[:, i] > 0).sum()),
                "fired_negative": int((neg[:, i] > 0).sum()),
                "auroc": float(score),
            }
            for i, score in zip(best.tolist(), scores.tolist(), strict=True)
        ],
    }
