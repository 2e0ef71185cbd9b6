"""Which features a prediction depends on: attribution (one forward and one backward pass) and
ablation (the measured effect), for one prompt and a target token (METHODS §9).

The SAE is spliced in at its site with its error term held fixed: x = decode(f) + e, e detached,
f a leaf. So the forward pass is the clean one, and the gradient with respect to f_i is
d_i · ∇_x m, d_i the decoder row in raw units. Feature i's attribution at position p is
a_i,p × ∂m/∂f_i,p: a first-order estimate of m(clean) - m(f_i,p set to 0).

The ablation effect is that difference measured: one (feature, position) at a time, x at p
becomes x - a_i,p d_i (error term kept), m(clean) - m(ablated). Positive: the feature raises
the metric. The metric m is the target's log-probability (default), its logit minus a contrast
token's logit, or its logit minus the mean logit.
"""

from __future__ import annotations

import torch
from torch import Tensor

from monoscope.models import LanguageModel
from monoscope.models.hooks import patch
from monoscope.sae import SparseAutoencoder
from monoscope.steer.intervention import check_sae, decoder_directions
from monoscope.steer.prompts import bos_id, encode_prompt, single_token, token_texts
from monoscope.steer.spec import SteeringError

METRICS = ("logprob", "logit_diff", "logit_mean")

ABLATION_BATCH = 16
"""Ablated copies of the prompt per forward pass."""


def _metric(logits: Tensor, kind: str, target: int, contrast: int | None) -> Tensor:
    """m [batch] from final-position logits [batch, vocab]."""
    logits = logits.float()
    if kind == "logprob":
        return logits.log_softmax(-1)[:, target]
    if kind == "logit_diff":
        return logits[:, target] - logits[:, contrast]
    return logits[:, target] - logits.mean(-1)


def ranks(values: Tensor) -> Tensor:
    """Ranks 0..n-1 of a 1-D tensor, ties given their mean rank."""
    order = values.argsort()
    ranked = torch.empty(len(values), dtype=torch.float64)
    ranked[order] = torch.arange(len(values), dtype=torch.float64)
    _, groups = values.unique(return_inverse=True)
    sums = torch.zeros(int(groups.max()) + 1, dtype=torch.float64).index_add_(0, groups, ranked)
    counts = torch.bincount(groups).double()
    return (sums / counts)[groups]


def spearman(a: Tensor, b: Tensor) -> float | None:
    """Spearman rank correlation of two 1-D tensors; None if undefined (n < 2, a constant)."""
    if len(a) < 2:
        return None
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = float(ra.norm() * rb.norm())
    return float((ra @ rb) / denominator) if denominator > 0 else None


def _first_edited(lm: LanguageModel, ids: Tensor) -> int:
    """1 if position 0 holds BOS (never spliced, see prompts.py), else 0."""
    bos = bos_id(lm.tokenizer)
    return int(bos is not None and int(ids[0, 0]) == bos)


def attribution_pass(
    lm: LanguageModel,
    sae: SparseAutoencoder,
    ids: Tensor,
    target: int | None,
    metric: str = "logprob",
    contrast: int | None = None,
) -> tuple[Tensor, Tensor, int, float]:
    """(activations f [P, n_features], attributions [P, n_features], target, m) for ids [1, P]:
    one forward and one backward pass. Row 0 is zero when it holds BOS. target None: the
    model's own top next token."""
    site = check_sae(lm, sae)
    start = _first_edited(lm, ids)
    param = next(sae.parameters())
    leaf: list[Tensor] = []

    def splice(x: Tensor) -> Tensor:  # x [1, P, d]
        rows = x[0, start:].detach()
        rows_on_device = rows.to(param.device, param.dtype)
        f = sae.encode(rows_on_device).detach().requires_grad_(True)
        x_hat = sae.finish_reconstruction(sae.decode(f), rows_on_device)
        error = rows.to(x_hat) - x_hat.detach()
        leaf.append(f)
        return torch.cat([x[:, :start].detach(), (x_hat + error).to(x)[None]], dim=1)

    with patch([(lm.site(site), splice)]), torch.enable_grad():
        logits = lm.model(input_ids=ids.to(lm.device), use_cache=False).logits[:, -1]
        if target is None:
            target = int(logits[0].argmax())
        m = _metric(logits, metric, target, contrast)[0]
        (grad,) = torch.autograd.grad(m, leaf[0])
    f = leaf[0].detach()
    pad = f.new_zeros(start, f.shape[1])
    return torch.cat([pad, f]), torch.cat([pad, f * grad]), target, float(m.detach())


@torch.no_grad()
def ablation_effects(
    lm: LanguageModel,
    sae: SparseAutoencoder,
    ids: Tensor,
    pairs: list[tuple[int, int, float]],
    metric: str,
    target: int,
    contrast: int | None,
) -> list[float]:
    """m(clean) - m(feature i at position p ablated) for each (feature, position, activation),
    the error term kept: x at p moves by exactly -a d_i. Batched, one pair per row; row 0 of
    each batch stays clean and is the reference, so both sides share the batch's rounding."""
    if not pairs:
        return []
    site = lm.site(check_sae(lm, sae))
    directions = decoder_directions(sae, torch.tensor([p[0] for p in pairs]))  # [N, d]
    effects: list[float] = []
    for start in range(0, len(pairs), ABLATION_BATCH):
        chunk = pairs[start : start + ABLATION_BATCH]
        rows = torch.arange(1, len(chunk) + 1)
        positions = torch.tensor([p[1] for p in chunk])
        activations = torch.tensor([p[2] for p in chunk])[:, None]
        steps = -activations * directions[start : start + len(chunk)]  # [b, d]

        def ablate(x: Tensor, rows=rows, positions=positions, steps=steps) -> Tensor:
            out = x.clone()
            out[rows, positions] += steps.to(x)
            return out

        with patch([(site, ablate)]):
            logits = lm.logits(ids.repeat(len(chunk) + 1, 1))[:, -1]
        m = _metric(logits, metric, target, contrast)
        effects += (m[0] - m[1:]).tolist()
    return effects


def attribute(
    lm: LanguageModel,
    sae: SparseAutoencoder,
    prompt: str,
    target: str | None = None,
    metric: str = "logprob",
    contrast: str | None = None,
    top: int = 20,
    n_ablate: int | None = None,
    per_position: int = 5,
    chat: bool = False,
) -> dict:
    """Attribution of every active (feature, position) of `prompt` to the next-token metric,
    and measured ablation effects of the `n_ablate` (default: `top`) largest by |attribution|.

    target: a string that must be one token (default: the model's own top next token).
    metric: logprob | logit_diff (needs `contrast`, one token) | logit_mean.

    Returns (plain JSON):
      prompt, tokens [str] (position 0 = BOS), site, chat,
      target {id, text, source: "given" | "model"}, probability (of the target),
      metric {kind, contrast {id, text} | null, value (m on the clean prompt),
              value_spliced (m with the SAE and its error term spliced in: equal up to float)},
      active_pairs (non-zero activations),
      rows [{feature, position, token, activation, attribution, ablation (null if not
             ablated)}] top `top` by |attribution|,
      correlation {pairs, attribution_vs_ablation, activation_vs_ablation} (Spearman over
             the ablated pairs; null when undefined),
      by_position [{position, token, features [{feature, activation, attribution}]}]
             (each position's `per_position` largest |attribution|).
    """
    _check_metric(metric, contrast)
    source = "given" if target is not None else "model"
    ids = encode_prompt(lm, prompt, chat)
    target_id = single_token(lm, target) if target is not None else None
    # _check_metric: logit_diff comes with its contrast token.
    contrast_id = (
        single_token(lm, contrast) if contrast is not None and metric == "logit_diff" else None
    )
    f, attr, target_id, value = attribution_pass(lm, sae, ids, target_id, metric, contrast_id)
    texts = token_texts(lm, ids[0])
    ranked = _ranked_pairs(f, attr)
    pairs = [(i, p, float(f[p, i])) for i, p in ranked[: top if n_ablate is None else n_ablate]]
    probability, clean = _clean_metric(lm, ids, metric, target_id, contrast_id)
    effects = ablation_effects(lm, sae, ids, pairs, metric, target_id, contrast_id)
    return {
        "prompt": prompt,
        "tokens": texts,
        "site": sae.cfg.site,
        "chat": chat,
        "target": {**_token_json(lm, target_id), "source": source},
        "probability": probability,
        "metric": {
            "kind": metric,
            "contrast": None if contrast_id is None else _token_json(lm, contrast_id),
            "value": clean,
            "value_spliced": value,
        },
        "active_pairs": len(ranked),
        "rows": _rows(ranked[:top], f, attr, texts, pairs, effects),
        "correlation": _correlation(attr, pairs, effects),
        "by_position": _by_position(f, attr, texts, per_position),
    }


def _clean_metric(
    lm: LanguageModel, ids: Tensor, metric: str, target: int, contrast: int | None
) -> tuple[float, float]:
    """(the target's probability, m) on the clean prompt ids [1, P], no SAE spliced in."""
    logits = lm.logits(ids)[:, -1]
    probability = float(logits[0].float().softmax(-1)[target])
    return probability, float(_metric(logits, metric, target, contrast)[0])


def _token_json(lm: LanguageModel, token: int) -> dict:
    """{id, text} of one token id."""
    return {"id": token, "text": token_texts(lm, [token])[0]}


def _check_metric(metric: str, contrast: str | None) -> None:
    """Refuse an unknown metric, or logit_diff without the token it contrasts with."""
    if metric not in METRICS:
        raise SteeringError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    if metric == "logit_diff" and contrast is None:
        raise SteeringError("metric logit_diff needs a contrast token")


def _ranked_pairs(f: Tensor, attr: Tensor) -> list[tuple[int, int]]:
    """Every active (feature, position) of f [P, n_features], largest |attribution| first."""
    positions, features = f.nonzero(as_tuple=True)
    order = attr[positions, features].abs().argsort(descending=True)
    return list(zip(features[order].tolist(), positions[order].tolist(), strict=True))


def _rows(
    ranked: list[tuple[int, int]],
    f: Tensor,
    attr: Tensor,
    texts: list[str],
    pairs: list[tuple[int, int, float]],
    effects: list[float],
) -> list[dict]:
    """One report row per (feature, position) of `ranked`; ablation None where the pair is not
    among the ablated `pairs` (whose measured `effects` they are)."""
    ablated = {(i, p): e for (i, p, _), e in zip(pairs, effects, strict=True)}
    return [
        {
            "feature": i,
            "position": p,
            "token": texts[p],
            "activation": float(f[p, i]),
            "attribution": float(attr[p, i]),
            "ablation": ablated.get((i, p)),
        }
        for i, p in ranked
    ]


def _correlation(attr: Tensor, pairs: list[tuple[int, int, float]], effects: list[float]) -> dict:
    """How well attribution, and activation alone, rank the measured ablation effects."""
    a = torch.tensor([float(attr[p, i]) for i, p, _ in pairs])
    act = torch.tensor([v for _, _, v in pairs])
    measured = torch.tensor(effects)
    return {
        "pairs": len(pairs),
        "attribution_vs_ablation": spearman(a, measured),
        "activation_vs_ablation": spearman(act, measured),
    }


def _by_position(f: Tensor, attr: Tensor, texts: list[str], k: int) -> list[dict]:
    """Each position's k largest |attribution| among its active features."""
    out = []
    for p, text in enumerate(texts):
        active = f[p].nonzero().flatten()
        best = active[attr[p, active].abs().argsort(descending=True)[:k]].tolist()
        out.append(
            {
                "position": p,
                "token": text,
                "features": [
                    {"feature": i, "activation": float(f[p, i]), "attribution": float(attr[p, i])}
                    for i in best
                ],
            }
        )
    return out
