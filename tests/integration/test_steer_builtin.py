"""Steering and attribution on the real built-in model (a random SAE at a middle layer: the
identity and the commands do not depend on training)."""

from __future__ import annotations

import json

import pytest
import torch

from monoscope.cli import main
from monoscope.models import load_model
from monoscope.steer import FeatureEdit, SteeringSpec, encode_prompt, steering
from monoscope.testing import tiny_sae

pytestmark = pytest.mark.integration

SITE = "blocks.6.hook_resid_post"


@pytest.fixture(scope="module")
def lm():
    return load_model("smollm2-135m", device="cpu")


@pytest.fixture(scope="module")
def sae(lm):
    return tiny_sae(lm, SITE, "topk", k=16)


def test_clamping_to_own_values_is_the_identity_on_the_builtin_model(lm, sae):
    ids = encode_prompt(lm, "The Golden Gate Bridge is in San Francisco")
    f = sae.encode(lm.capture(ids, [SITE])[SITE][0]).detach()
    edits = [
        FeatureEdit(int(i), "clamp", float(f[p, i]), positions=[p])
        for p in range(1, ids.shape[1])
        for i in f[p].nonzero().flatten().tolist()
    ]
    clean = lm.logits(ids)
    with steering(lm, {"sae": sae}, SteeringSpec(tuple(edits))):
        steered = lm.logits(ids)
    assert (steered - clean).abs().max() < 1e-3 * clean.abs().max()
    with steering(lm, {"sae": sae}, SteeringSpec((FeatureEdit(edits[0].feature, "add", 200.0),))):
        assert (lm.logits(ids) - clean).abs().max() > 1.0  # and a real edit does change them


def test_steer_and_attribute_commands_on_the_builtin_model(sae, tmp_path, capsys):
    sae.save(tmp_path / "sae")
    steer = ["steer", "--sae", str(tmp_path / "sae"), "--feature", "5=30", "--prompt", "Hello"]
    assert main([*steer, "--max-new-tokens", "5", "--temperature", "0"]) == 0
    assert "steered:" in capsys.readouterr().out
    out = tmp_path / "attr.json"
    attribute = ["attribute", "--sae", str(tmp_path / "sae"), "--prompt"]
    attribute += ["The capital of France is", "--top", "5", "--json", str(out)]
    assert main([*attribute, "--target", " Paris"]) == 0
    result = json.loads(out.read_text())
    assert result["target"]["text"] == " Paris" and result["probability"] > 0.1
    assert result["metric"]["value_spliced"] == pytest.approx(result["metric"]["value"], abs=1e-3)
    assert all(r["ablation"] is not None for r in result["rows"])
    assert main([*attribute, "--target", " Parisian"]) == 2
    assert "' Parisian' is 2 tokens [' Paris', 'ian']" in capsys.readouterr().err
    assert torch.isfinite(torch.tensor([r["attribution"] for r in result["rows"]])).all()
