"""Features vs neurons: the identity dictionary, `run_neurons`, the streaming correlation and the
`compare-neurons` report, on tiny random models."""

from __future__ import annotations

import json
import sqlite3
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from monoscope.analyze import AnalyzeConfig
from monoscope.analyze import run as run_analyze
from monoscope.analyze.logits import logit_effects
from monoscope.analyze.schema import DDL_INTERPRET, create
from monoscope.harvest import ActivationStore, HarvestConfig
from monoscope.harvest import run as run_harvest
from monoscope.interpret import CompareNeuronsConfig, NeuronsConfig, run
from monoscope.interpret.compare import summarise
from monoscope.interpret.compare_scores import rank_test
from monoscope.interpret.correlation import (
    StreamingCorrelation,
    best_matches,
    context_batches,
    correlate,
    upstream_layers,
)
from monoscope.sae import SAEConfig, SAEFormatError, build_sae, load_sae
from monoscope.sae.identity import NeuronDictionary, neuron_config

SITE = "blocks.1.mlp.hook_post"


# -- the identity dictionary ------------------------------------------------------------------
@pytest.mark.parametrize("signs", ["positive", "both"])
def test_identity_dictionary_round_trips_and_encodes_the_neurons(signs, tmp_path):
    sae = NeuronDictionary(neuron_config(16, signs, site=SITE))
    sae.save(tmp_path / "sae")
    loaded = load_sae(tmp_path / "sae")
    assert isinstance(loaded, NeuronDictionary) and loaded.cfg == sae.cfg
    x = torch.randn(50, 16)
    f = loaded.encode(x)
    if signs == "positive":
        assert f.shape == (50, 16) and torch.equal(f, x.clamp_min(0))
    else:
        assert f.shape == (50, 32) and torch.equal(
            f, torch.cat([x.clamp_min(0), (-x).clamp_min(0)], 1)
        )
        assert torch.allclose(loaded.decode(f), x)  # both signs: an exact reconstruction
    assert torch.equal(f, torch.relu(loaded.pre_activations(x)))  # the weights say the same


def test_identity_dictionary_refuses_other_weights_and_sizes(tmp_path):
    sae = NeuronDictionary(neuron_config(8))
    with torch.no_grad():
        sae.W_dec[0, 1] = 0.5
    sae.save(tmp_path / "bad")
    with pytest.raises(SAEFormatError, match="identity"):
        load_sae(tmp_path / "bad")
    with pytest.raises(ValueError, match="2·d_in"):
        NeuronDictionary(SAEConfig(arch="neurons", d_in=8, n_features=12))
    with pytest.raises(ValueError, match="signs"):
        neuron_config(8, "negative")
    with pytest.raises(ValueError, match="nothing to train"):
        sae.training_step(torch.randn(4, 8), 1.0)


# -- run_neurons ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def neurons_db(tiny_llama, tiny_model_dirs, corpus_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("neurons")
    cfg = NeuronsConfig(
        model=str(tiny_model_dirs["llama"]),
        layer=1,
        corpus=str(corpus_file),
        tokens=800,
        out=str(out),
        context=32,
        dtype="float32",
        batch_size=256,
        progress=False,
    )
    return run(cfg, tiny_llama)


def test_run_neurons_writes_a_complete_store_of_the_layers_neurons(neurons_db, tiny_llama):
    width = tiny_llama.site(SITE).width
    conn = sqlite3.connect(neurons_db)
    meta = {k: json.loads(v) for k, v in conn.execute("SELECT key, value FROM meta")}
    assert meta["complete"] and meta["tokens_seen"] == 800
    assert meta["sae"]["arch"] == "neurons" and meta["sae"]["site"] == SITE
    assert conn.execute("SELECT count(*) FROM features").fetchone()[0] == width
    # each neuron's statistics are those of its positive part in the harvested store
    acts = torch.cat([a for a, _ in ActivationStore(neurons_db.parent / "acts").rows(SITE, "all")])
    rows = conn.execute("SELECT n_fired, max_act FROM features ORDER BY id").fetchall()
    n_fired, max_act = [r[0] for r in rows], [r[1] for r in rows]
    assert n_fired == (acts > 0).sum(0).tolist()
    assert torch.allclose(torch.tensor(max_act), acts.clamp_min(0).max(0).values)
    assert conn.execute("SELECT count(*) FROM examples WHERE kind = 'top'").fetchone()[0] > 0


def test_run_neurons_writes_each_neurons_direct_logit_effects(neurons_db, tiny_llama):
    down = tiny_llama.model.model.layers[1].mlp.down_proj.weight  # [d_model, width]
    top_ids, top, bottom_ids, _ = logit_effects(down.T.detach(), tiny_llama, 10)
    conn = sqlite3.connect(neurons_db)
    rows = conn.execute("SELECT logit_top, logit_bottom FROM features ORDER BY id").fetchall()
    assert [[t for t, _, _ in json.loads(r[0])] for r in rows] == top_ids.tolist()
    assert [[t for t, _, _ in json.loads(r[1])] for r in rows] == bottom_ids.tolist()
    assert json.loads(rows[3][0])[0][2] == pytest.approx(float(top[3, 0]), rel=1e-3)


def test_run_neurons_with_both_signs_has_twice_the_features(
    tiny_llama, tiny_model_dirs, corpus_file, tmp_path
):
    cfg = NeuronsConfig(
        model=str(tiny_model_dirs["llama"]),
        layer=0,
        corpus=str(corpus_file),
        tokens=300,
        out=str(tmp_path),
        context=32,
        signs="both",
        progress=False,
    )
    conn = sqlite3.connect(run(cfg, tiny_llama))
    width = tiny_llama.site("blocks.0.mlp.hook_post").width
    assert conn.execute("SELECT count(*) FROM features").fetchone()[0] == 2 * width
    # the negative side of a neuron promotes what its positive side suppresses
    top = conn.execute("SELECT logit_top FROM features WHERE id = ?", (width + 2,)).fetchone()[0]
    bottom = conn.execute("SELECT logit_bottom FROM features WHERE id = 2").fetchone()[0]
    assert [t for t, _, _ in json.loads(top)] == [t for t, _, _ in json.loads(bottom)]


# -- the streaming correlation ----------------------------------------------------------------
def test_streaming_correlation_equals_numpy_across_batches():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(301, 7, generator=gen) * 3 + 5  # means far from 0: no cancellation excuse
    y = torch.randn(301, 4, generator=gen) + x[:, :4] * torch.tensor([1.0, -2.0, 0.1, 0.0])
    y[:, 3] = 2.0  # a constant feature has no correlation: 0, not nan
    acc = StreamingCorrelation(7, 4)
    for rows in torch.arange(301).split([1, 100, 57, 143]):
        acc.update(x[rows], y[rows])
    expected = np.zeros((7, 4))
    expected[:, :3] = np.corrcoef(x.numpy(), y[:, :3].numpy(), rowvar=False)[:7, 7:]
    np.testing.assert_allclose(acc.pearson().numpy(), expected, atol=1e-12)


def test_best_matches_picks_the_largest_absolute_r_over_layers():
    acc = {0: StreamingCorrelation(3, 2), 2: StreamingCorrelation(3, 2)}
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(200, 3, generator=gen), torch.randn(200, 3, generator=gen)
    y = torch.stack([-b[:, 2], a[:, 1] + 0.5 * torch.randn(200, generator=gen)], 1)
    acc[0].update(a, y)
    acc[2].update(b, y)
    best = best_matches(acc)
    assert best.layer.tolist()[0] == 2 and best.neuron.tolist()[0] == 2
    assert best.r[0] == pytest.approx(-1.0)
    assert best.layer.tolist()[1] == 0 and best.neuron.tolist()[1] == 1 and 0.5 < best.r[1] < 1
    assert best.per_layer.shape == (2, 2) and best.per_layer[1, 0] == pytest.approx(1.0)


def test_upstream_layers():
    assert upstream_layers("blocks.3.hook_resid_post") == [0, 1, 2, 3]
    assert upstream_layers("blocks.3.hook_resid_pre") == [0, 1, 2]
    with pytest.raises(ValueError, match="layer"):
        upstream_layers("embed")


@pytest.fixture(scope="module")
def resid_store(tiny_llama, tiny_model_dirs, corpus_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("resid") / "acts"
    cfg = HarvestConfig(
        model=str(tiny_model_dirs["llama"]),
        sites=["blocks.1.hook_resid_post", SITE],
        corpus=str(corpus_file),
        tokens=700,
        out=str(out),
        context=32,
        progress=False,
    )
    return run_harvest(cfg, tiny_llama)


def test_rebuilt_contexts_give_back_the_stored_activations(resid_store, tiny_llama):
    rows = [
        tiny_llama.capture(ids, [SITE])[SITE][stored]
        for ids, stored in context_batches(resid_store, batch_tokens=100)
    ]
    stored = torch.cat([a for a, _ in resid_store.rows(SITE, "all")])
    assert torch.allclose(torch.cat(rows), stored, atol=1e-5)


class Linear(nn.Module):
    """A stand-in 'SAE' whose features are affine functions of the neurons it reads."""

    def __init__(self, site: str, weights: torch.Tensor) -> None:
        super().__init__()
        self.cfg = SimpleNamespace(site=site)
        self.w = nn.Parameter(weights)

    def encode(self, x):
        return x @ self.w + 1.0


def test_a_feature_equal_to_a_neuron_is_found(resid_store, tiny_llama):
    width = tiny_llama.site(SITE).width
    w = torch.zeros(width, 3)
    w[5, 0], w[9, 1] = 2.0, -1.0  # feature 0 = 2·neuron 5, feature 1 = -neuron 9
    w[:, 2] = torch.randn(width, generator=torch.Generator().manual_seed(0))
    acc = correlate(tiny_llama, Linear(SITE, w), resid_store, torch.tensor([0, 1, 2]), [0, 1], 100)
    best = best_matches(acc)
    assert best.layer[:2].tolist() == [1, 1] and best.neuron[:2].tolist() == [5, 9]
    assert best.r[0] == pytest.approx(1.0, abs=1e-6) and best.r[1] == pytest.approx(-1.0, abs=1e-6)
    assert abs(best.r[2]) < 0.99  # a mixture of every neuron matches none of them exactly
    assert acc[0].n == resid_store.n_tokens


def test_summarise_counts_at_most_the_threshold():
    max_r = torch.tensor([0.1, 0.3, 0.31, 0.95], dtype=torch.float64)
    s = summarise(max_r, 0.3, bins=10)
    assert s["fraction_at_most_threshold"] == 0.5
    assert s["histogram"]["counts"] == [0, 1, 0, 2, 0, 0, 0, 0, 0, 1]  # bins [a, b)
    assert len(s["histogram"]["edges"]) == 11


def test_rank_test_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    a, b = [0.9, 0.8, 0.8, 0.7, 0.5], [0.6, 0.5, 0.4, 0.5, 0.3, 0.2]
    auc, p = rank_test(a, b)
    ref = stats.mannwhitneyu(
        a, b, alternative="two-sided", method="asymptotic", use_continuity=False
    )
    assert auc == pytest.approx(ref.statistic / (len(a) * len(b)))
    assert p == pytest.approx(ref.pvalue)


# -- compare-neurons end to end ---------------------------------------------------------------
@pytest.fixture(scope="module")
def features_db(resid_store, tiny_llama, tmp_path_factory):
    folder = tmp_path_factory.mktemp("sae_run")
    sae = build_sae(
        SAEConfig(arch="topk", d_in=32, n_features=48, k=4, site="blocks.1.hook_resid_post")
    )
    sae.save(folder / "sae")
    cfg = AnalyzeConfig(
        sae=str(folder / "sae"),
        acts=str(resid_store.path),
        out=str(folder / "features.db"),
        map=False,
        batch_size=256,
        progress=False,
    )
    return run_analyze(cfg, sae=sae, store=resid_store, lm=tiny_llama)


def _add_scores(db, scorer, values):
    conn = create(db)
    conn.executescript(DDL_INTERPRET)  # schema.create leaves them out of a new version-2 store
    with conn:
        conn.executemany(
            "INSERT OR REPLACE INTO scores VALUES (?, ?, 'stub:judge', 'stub:explainer', 'v1', "
            "'s1', 'ok', ?, 0.5, 'an explanation', '{}', '[]', '[]', '2026-01-01')",
            [(f, scorer, v) for f, v in values.items()],
        )
    conn.close()


def test_compare_neurons_reports_missing_scores_then_the_scores(
    features_db, neurons_db, tiny_llama, tmp_path
):
    cfg = CompareNeuronsConfig(
        features_db=str(features_db),
        neurons_db=str(neurons_db),
        out=str(tmp_path / "cmp"),
        n_features=20,
        batch_size=100,
        progress=False,
    )
    report = run(cfg, tiny_llama)
    c = report["correlation"]
    assert c["n_sampled"] == 20 and c["layers"] == [0, 1] and c["tokens"] == 700
    max_r = [f["max_abs_r"] for f in c["features"]]
    assert c["fraction_at_most_threshold"] == pytest.approx(np.mean(np.array(max_r) <= 0.3))
    assert sum(c["histogram"]["counts"]) == 20
    assert c["fraction_by_last_layer"]["1"] == c["fraction_at_most_threshold"]
    assert c["fraction_by_last_layer"]["0"] >= c["fraction_at_most_threshold"]
    assert report["scores"] == {} and report["specificity"] is None
    assert any("explanation scores" in note for note in report["missing"])
    for name in ("report.json", "correlation.json", "correlation_hist.png", "summary.md"):
        assert (tmp_path / "cmp" / name).is_file()
    assert "Missing" in (tmp_path / "cmp" / "summary.md").read_text()

    _add_scores(features_db, "detection", {i: 0.8 + i / 1000 for i in range(10)})
    _add_scores(neurons_db, "detection", {i: 0.6 for i in range(5)})
    _add_scores(features_db, "fuzzing", {0: 0.7})
    for name, grade in (("spec_f", 2.5), ("spec_n", 0.5)):
        entries = [{"feature": f, "mean_firing": grade} for f in range(4)]
        entries.append({"feature": 9, "mean_firing": None})  # no parsable firing grade
        (tmp_path / name).mkdir()
        (tmp_path / name / "specificity.json").write_text(json.dumps({"features": entries}))
    cfg.specificity_features, cfg.specificity_neurons = (
        str(tmp_path / "spec_f"),
        str(tmp_path / "spec_n"),
    )
    cfg.n_scored, cfg.n_features, cfg.max_tokens = 8, 5, 100
    report = run(cfg, tiny_llama)
    assert report["correlation"]["tokens"] == 100  # --max-tokens cuts a context short
    detection = report["scores"]["detection"]
    assert detection["features"]["n"] == 8 and detection["neurons"]["n"] == 5
    assert detection["p_features_beat_neurons"] == 1.0
    assert report["scores"]["fuzzing"]["neurons"]["n"] == 0
    assert report["missing"] == ["no fuzzing scores in the neurons' store"]
    assert report["specificity"]["features"]["mean"] == 2.5
    assert report["specificity"]["neurons"]["mean"] == 0.5
    assert (tmp_path / "cmp" / "scores.png").is_file() and (
        tmp_path / "cmp" / "specificity.png"
    ).is_file()


def test_a_neurons_dictionary_is_refused_by_the_saelens_export(tmp_path):
    from monoscope.sae import convert
    from monoscope.sae.identity import NeuronDictionary, neuron_config

    dictionary = NeuronDictionary(neuron_config(8))
    dictionary.save(tmp_path / "neurons")
    with pytest.raises(ValueError, match="not an SAE SAELens loads"):
        convert(tmp_path / "neurons", to="saelens", out=tmp_path / "out")
