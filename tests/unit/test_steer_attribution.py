"""Attribution against measured ablation (equal in the linear regime), the ablation against the
steering hook, rank correlation, and feature search by prompts."""

from __future__ import annotations

import json

import pytest
import torch

from monoscope.steer import (
    FeatureEdit,
    SteeringError,
    SteeringSpec,
    attribute,
    contrast,
    encode_prompt,
    features_for_span,
    spearman,
    steering,
)
from monoscope.steer.attribution import ranks
from monoscope.steer.search import auroc, split_marked
from monoscope.testing import tiny_sae

SITE = "blocks.1.hook_resid_post"
PROMPT = "the model reads a tok"


@pytest.fixture(scope="module")
def sae(tiny_llama):
    return tiny_sae(tiny_llama, SITE, "topk", k=8)


def shrunk(lm, factor: float):
    """The SAE with decoder rows scaled by `factor`: the same activations, each moving x
    `factor` times less, so ablating one is a small, nearly linear change."""
    small = tiny_sae(lm, SITE, "topk", k=8)
    with torch.no_grad():
        small.W_dec.mul_(factor)
    return small


def test_attribution_equals_ablation_in_the_linear_regime(tiny_llama):
    result = attribute(tiny_llama, shrunk(tiny_llama, 0.005), PROMPT, target="e", top=8)
    for row in result["rows"]:
        assert row["ablation"] == pytest.approx(row["attribution"], rel=0.03)
    assert result["correlation"]["attribution_vs_ablation"] > 0.95
    assert result["metric"]["value_spliced"] == pytest.approx(result["metric"]["value"], abs=1e-5)


def test_attribution_matches_ablation_in_sign_and_rough_size(tiny_llama, sae):
    result = attribute(tiny_llama, sae, PROMPT, target="e", top=5)
    for row in result["rows"]:
        assert row["ablation"] * row["attribution"] > 0
        assert 0.25 < row["ablation"] / row["attribution"] < 4


def test_ablation_effect_is_the_steering_ablation_at_one_position(tiny_llama, sae):
    result = attribute(tiny_llama, sae, PROMPT, target="e", top=3)
    ids = encode_prompt(tiny_llama, PROMPT)
    target = result["target"]["id"]
    clean = tiny_llama.logits(ids)[0, -1].log_softmax(-1)[target]
    for row in result["rows"]:
        spec = SteeringSpec((FeatureEdit(row["feature"], "ablate", positions=[row["position"]]),))
        with steering(tiny_llama, {"sae": sae}, spec):
            ablated = tiny_llama.logits(ids)[0, -1].log_softmax(-1)[target]
        assert row["ablation"] == pytest.approx(float(clean - ablated), abs=1e-5)


def test_attribution_result_shape_and_default_target(tiny_llama, sae):
    result = attribute(tiny_llama, sae, PROMPT, top=4, n_ablate=2)
    json.dumps(result)
    ids = encode_prompt(tiny_llama, PROMPT)
    assert result["target"]["id"] == int(tiny_llama.logits(ids)[0, -1].argmax())
    assert result["target"]["source"] == "model" and len(result["rows"]) == 4
    assert [r["ablation"] is None for r in result["rows"]] == [False, False, True, True]
    assert result["active_pairs"] == 8 * (ids.shape[1] - 1)  # k at every position but BOS
    assert result["by_position"][0]["features"] == []  # BOS
    assert len(result["by_position"]) == ids.shape[1]
    diff = attribute(tiny_llama, sae, PROMPT, "e", metric="logit_diff", contrast="x", top=2)
    assert diff["metric"]["contrast"]["text"] == "x"
    mean = attribute(tiny_llama, sae, PROMPT, "e", metric="logit_mean", top=2, n_ablate=0)
    assert mean["correlation"]["pairs"] == 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"target": "en"}, r"target 'en' is 2 tokens \['e', 'n'\], not one"),
        ({"target": "e", "metric": "logit_diff"}, "needs a contrast"),
        ({"target": "e", "metric": "odds"}, "unknown metric"),
        ({"target": "e", "metric": "logit_diff", "contrast": "xy"}, "'xy' is 2 tokens"),
    ],
)
def test_bad_attribution_requests(tiny_llama, sae, kwargs, message):
    with pytest.raises(SteeringError, match=message):
        attribute(tiny_llama, sae, PROMPT, **kwargs)


def test_rank_correlation():
    assert spearman(torch.tensor([1.0, 2, 3, 4]), torch.tensor([1.0, 3, 2, 4])) == pytest.approx(
        0.8
    )
    assert ranks(torch.tensor([5.0, 1, 1, 2])).tolist() == [3.0, 0.5, 0.5, 2.0]
    assert spearman(torch.tensor([1.0, 1]), torch.tensor([1.0, 2])) is None
    assert spearman(torch.tensor([1.0]), torch.tensor([1.0])) is None


def test_features_for_a_marked_span(tiny_llama, sae):
    result = features_for_span(tiny_llama, sae, "the [[model]] reads", top=5)
    json.dumps(result)
    span = result["span"]
    assert result["prompt"] == "the model reads" and span["text"] == "model"
    assert span["positions"] == [5, 6, 7, 8, 9]  # BOS + 't', 'h', 'e', ' ' come first
    ids = encode_prompt(tiny_llama, "the model reads")
    f = sae.encode(tiny_llama.capture(ids, [SITE])[SITE][0]).detach()
    mean = f[5:10].mean(0)
    assert [r["feature"] for r in result["features"]] == mean.argsort(descending=True)[:5].tolist()
    best = result["features"][0]
    assert best["mean"] == pytest.approx(float(mean.max()))
    assert best["activations"] == pytest.approx(f[5:10, best["feature"]].tolist())
    again = features_for_span(tiny_llama, sae, "the model reads", span=(4, 9), top=5)
    assert again["features"] == result["features"]


@pytest.mark.parametrize(
    "text, message",
    [("no markers", "mark exactly one span"), ("a [[b]] [[c]]", "exactly one"), ("[[ ]]", "empty")],
)
def test_bad_spans(text, message):
    with pytest.raises(SteeringError, match=message):
        split_marked(text)


def test_contrast_between_two_prompt_sets(tiny_llama, sae):
    positive, negative = ["residual stream", "the residual"], ["a token", "it writes"]
    result = contrast(tiny_llama, sae, positive, negative, top=5)
    json.dumps(result)

    def per_prompt(texts):
        rows = []
        for text in texts:
            ids = encode_prompt(tiny_llama, text)
            rows.append(sae.encode(tiny_llama.capture(ids, [SITE])[SITE][0, 1:]).max(0).values)
        return torch.stack(rows).detach()

    difference = per_prompt(positive).mean(0) - per_prompt(negative).mean(0)
    best = result["features"][0]
    assert best["feature"] == int(difference.argmax())
    assert best["difference"] == pytest.approx(float(difference.max()))
    assert 0 <= best["fired_positive"] <= 2 and 0.5 <= best["auroc"] <= 1


def test_auroc_counts_ties_half():
    pos, neg = torch.tensor([[3.0], [1.0]]), torch.tensor([[2.0], [1.0]])
    assert auroc(pos, neg).tolist() == [0.625]
