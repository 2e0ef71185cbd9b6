"""`explain` and `score` on the real built-in model: SmolLM2-135M-Instruct explains 20
features of an SAE on its own layer 15 and judges the explanations (detection with hard
negatives checked by re-encoding, embedding). A 135M judge is a pipeline check here, not a
result: the test asserts what a user relies on, not the scores' values."""

from __future__ import annotations

import json
import sqlite3

import pytest
import torch

from monoscope.analyze import analyze
from monoscope.harvest import harvest
from monoscope.interpret import ExplainConfig, ScoreConfig, run
from monoscope.models import load_model
from monoscope.sae import SAEConfig, build_sae

pytestmark = pytest.mark.integration

SITE = "blocks.15.hook_resid_post"


@pytest.fixture(scope="module")
def smollm():
    return load_model("smollm2-135m", device="cpu")


@pytest.fixture(scope="module")
def store_db(smollm, corpus_file, tmp_path_factory):
    """A feature store of a random TopK SAE (saved, so hard negatives can re-encode windows)
    on 4,096 tokens of layer 15."""
    root = tmp_path_factory.mktemp("interpret")
    store = harvest(smollm, str(corpus_file), [SITE], tokens=4096, out=root / "acts")
    x = torch.cat([acts.float() for acts, _ in store.rows(SITE, "all")])
    cfg = SAEConfig(
        arch="topk",
        d_in=576,
        n_features=576,
        k=16,
        input_scale=576**0.5 / float(x.norm(dim=-1).mean()),
        site=SITE,
        model="smollm2-135m",
    )
    sae = build_sae(cfg, seed=0)
    sae.init_b_dec(x[:1024])
    sae.save(root / "sae")
    return analyze(root / "sae", store, model=smollm, out=root / "features.db", map=False)


def test_explain_and_score_20_features_locally(smollm, store_db):
    common = {"db": str(store_db), "features": "top-density:20", "progress": False}
    explained = run(ExplainConfig(**common), lm=smollm)
    assert explained["done"] == 20 and explained["calls_sent"] == 20
    scored = run(
        ScoreConfig(
            **common, scorers="detection,embedding", max_activating=3, max_non_activating=3
        ),
        lm=smollm,
    )
    assert scored["skipped_no_explanation"] == explained["unparsable_features"]
    conn = sqlite3.connect(store_db)
    rows = conn.execute("SELECT scorer, status, score, metrics, details FROM scores").fetchall()
    assert len(rows) == 2 * scored["done"] > 0
    for scorer, status, score, metrics, details in rows:
        assert status in ("ok", "unparsable", "undefined")
        assert score is None or 0 <= score <= 1
        if scorer == "detection":  # the local judge answers through its logprobs
            assert json.loads(metrics)["answers"] == "logprobs"
            assert {d["kind"] for d in json.loads(details)} <= {
                "top",
                "quantile",
                "random",
                "neighbour",
            }
    shown = conn.execute("SELECT COUNT(*) FROM features WHERE explanation IS NOT NULL")
    assert shown.fetchone()[0] == 20 - explained["unparsable"]
    rerun = run(ExplainConfig(**common, overwrite=True), lm=smollm)
    assert rerun["calls_sent"] == 0 and rerun["calls_cached"] == 20
