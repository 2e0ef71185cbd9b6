"""`analyze` on the real built-in model: a small store of SmolLM2-135M's layer 15, a random TopK
SAE, the whole run with logit effects and the UMAP map."""

from __future__ import annotations

import json
import math
import sqlite3

import pytest
import torch

from monoscope.analyze import analyze, open_readonly, read_meta
from monoscope.analyze.logits import logit_effects
from monoscope.harvest import harvest
from monoscope.models import load_model
from monoscope.sae import SAEConfig, build_sae

pytestmark = pytest.mark.integration

SITE = "blocks.15.hook_resid_post"


@pytest.fixture(scope="module")
def smollm():
    return load_model("smollm2-135m", device="cpu")


def test_direct_logits_of_token_embeddings(smollm):
    """SmolLM2 ties its embeddings: a direction equal to token t's embedding should promote t.
    It does for most frequent tokens (ids 200-1200: 78% when measured), not for rare ones,
    whose small embeddings lose to larger neighbours."""
    embed = smollm.model.get_input_embeddings().weight.detach()
    the = smollm.tokenizer.encode(" the")[0]
    assert logit_effects(embed[[the]], smollm, 1)[0].item() == the
    frequent = torch.arange(200, 1200)
    top = logit_effects(embed[frequent], smollm, 1)[0][:, 0]
    assert (top == frequent).float().mean() > 0.6


def test_analyze_a_small_store(smollm, corpus_file, tmp_path):
    store = harvest(
        smollm, str(corpus_file), [SITE], tokens=1024, out=tmp_path / "acts", progress=False
    )
    x = torch.cat([acts.float() for acts, _ in store.rows(SITE, "all")])
    cfg = SAEConfig(
        arch="topk",
        d_in=576,
        n_features=1152,
        k=32,
        input_scale=576**0.5 / float(x.norm(dim=-1).mean()),
        site=SITE,
        model="smollm2-135m",
    )
    sae = build_sae(cfg, seed=0)
    sae.init_b_dec(x[:1024])
    the = smollm.tokenizer.encode(" the")[0]
    with torch.no_grad():
        embedding = smollm.model.get_input_embeddings().weight[the]
        sae.W_dec[0] = embedding / embedding.norm()
    out = analyze(sae, store, model=smollm, out=tmp_path / "features.db", progress=False)

    meta = read_meta(open_readonly(out))
    assert meta["complete"] and meta["tokens_seen"] == 1024
    assert meta["model"]["name"] == "smollm2-135m" and meta["sae"]["n_features"] == 1152
    conn = sqlite3.connect(out)
    features = conn.execute("SELECT id, n_fired, density, map_x, map_y, logit_top FROM features")
    tops = dict(
        conn.execute("SELECT feature, count(*) FROM examples WHERE kind = 'top' GROUP BY 1")
    )
    alive = 0
    for i, n_fired, density, map_x, map_y, logit_top in features:
        assert math.isfinite(map_x) and math.isfinite(map_y)
        if n_fired:
            alive += 1
            assert 0 < density <= 1 and tops[i] >= 1
        if i == 0:
            token, text, _ = json.loads(logit_top)[0]
            assert token == the and text == " the"
    assert alive > 100
    assert conn.execute("SELECT text FROM vocab WHERE id = ?", (the,)).fetchone() == (" the",)
    assert conn.execute("SELECT count(*) FROM vocab").fetchone() == (len(smollm.tokenizer),)
    conn.close()
