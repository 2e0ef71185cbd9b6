"""monoscope.analyze: the feature store against brute-force computations over the whole stream
(statistics, top examples, interval samples, non-firing samples, windows, neighbours, logit
effects), exact resume, and the refusals (another run's store, a wrong width, a second writer,
a missing model or extra)."""

from __future__ import annotations

import json
import shutil
import sqlite3
import sys

import pytest
import torch

from monoscope.analyze import AnalyzeConfig, FeatureStoreError, analyze, read_meta
from monoscope.analyze import neighbours as neighbours_module
from monoscope.analyze import runner as analyze_runner
from monoscope.analyze.accumulate import FINE_PER_INTERVAL, Accumulator
from monoscope.analyze.lock import writer_lock
from monoscope.analyze.logits import logit_effects, token_texts
from monoscope.analyze.neighbours import cosine_neighbours
from monoscope.analyze.sampling import hash_keys
from monoscope.analyze.schema import open_readonly
from monoscope.cli import main
from monoscope.harvest import ActivationStore, HarvestConfig, StoreError
from monoscope.harvest import run as harvest
from monoscope.models import load_model
from monoscope.sae import SAEConfig, build_sae

SITE = "blocks.1.hook_resid_post"
D = 32  # width of the tiny models' residual stream
CONTEXT = 32
OPTIONS = dict(map=False, batch_size=200, progress=False)
WINDOW = 16  # 11 tokens before the centre, 4 after: whole windows fit in a context of 32


@pytest.fixture(scope="module")
def store(tiny_llama, corpus_file, tmp_path_factory) -> ActivationStore:
    cfg = HarvestConfig(
        model=tiny_llama.name,
        sites=[SITE],
        corpus=str(corpus_file),
        tokens=3000,
        out=str(tmp_path_factory.mktemp("analyze") / "acts"),
        context=CONTEXT,
        batch_tokens=128,
        shard_tokens=700,
        heldout_fraction=0.2,
        progress=False,
    )
    return harvest(cfg, tiny_llama)


def make_sae(arch: str = "topk", n_features: int = 4 * D, d_in: int = D, seed: int = 0):
    k = 4 if arch == "topk" else None
    cfg = SAEConfig(arch=arch, d_in=d_in, n_features=n_features, k=k, site=SITE)
    sae = build_sae(cfg, seed=seed)
    if arch == "relu":
        with torch.no_grad():  # an encoder that fires on some tokens only
            sae.W_enc.copy_(
                torch.randn(d_in, n_features, generator=torch.Generator().manual_seed(1))
            )
            sae.b_enc.fill_(-3.0)
    return sae.eval()


@pytest.fixture(scope="module")
def sae():
    return make_sae()


def stream(store: ActivationStore, split: str = "all") -> tuple[torch.Tensor, torch.Tensor]:
    """Every row of the split in store order: activations [n, d] and locs [n]."""
    xs, locs = [], []
    for acts, meta in store.rows(SITE, split):
        xs.append(acts.float())
        locs.append(meta["context_index"] * CONTEXT + meta["position"].long())
    return torch.cat(xs), torch.cat(locs)


def encoded(sae, store, split="all"):
    x, locs = stream(store, split)
    with torch.no_grad():
        return sae.encode(x), locs


def table(db, sql, *args):
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def db(sae, store, tiny_llama, tmp_path_factory):
    out = tmp_path_factory.mktemp("db") / "features.db"
    return analyze(sae, store, model=tiny_llama, out=out, top_n=5, window=WINDOW, **OPTIONS)


# -- statistics and examples against brute force ------------------------------------------------


def test_statistics_equal_brute_force(db, sae, store):
    f, _ = encoded(sae, store)
    rows = table(
        db, "SELECT id, n_fired, density, max_act, mean_act, hist FROM features ORDER BY id"
    )
    assert len(rows) == sae.cfg.n_features
    fired = (f > 0).sum(0)
    sums = torch.where(f > 0, f, 0).double().sum(0)
    for i, n_fired, density, max_act, mean_act, hist in rows:
        assert n_fired == int(fired[i]) and density == pytest.approx(n_fired / f.shape[0])
        assert max_act == pytest.approx(float(f[:, i].max()), rel=1e-6)
        expected_mean = float(sums[i] / n_fired) if n_fired else 0.0
        assert mean_act == pytest.approx(expected_mean, rel=1e-5)
        assert sum(json.loads(hist)) == n_fired  # every firing lands in one bin
    meta = read_meta(open_readonly(db))
    assert meta["complete"] is True and meta["tokens_seen"] == f.shape[0] == store.n_tokens
    assert len(meta["hist_edges"]) == OPTIONS.get("n_bins", 50) + 1
    assert sum(meta["density_hist"]["counts"]) + meta["density_hist"]["dead"] == f.shape[1]
    assert fired.min() == 0 < fired.max()  # the test covers dead and live features


def test_histogram_bins_hold_their_activations(sae, store):
    f, _ = encoded(sae, store)
    acc = accumulate(sae, store, batch_size=300)
    edges = acc.log10_edges()
    for i in torch.nonzero(acc.state["n_fired"]).flatten()[:20].tolist():
        values = f[:, i][f[:, i] > 0].double().log10()
        bins = torch.bucketize(values, edges[1:-1], right=True)
        assert acc.hist()[i].tolist() == torch.bincount(bins, minlength=acc.n_bins).tolist()


def test_top_examples_are_the_brute_force_top_n(db, sae, store):
    f, locs = encoded(sae, store)
    for i in range(sae.cfg.n_features):
        got = table(
            db,
            "SELECT rank, activation, context, position FROM examples "
            "WHERE feature = ? AND kind = 'top' ORDER BY rank",
            i,
        )
        firing = (f[:, i] > 0).nonzero().flatten()
        # Repeated text gives exact ties: the earlier token ranks first.
        order = torch.sort(f[firing, i], descending=True, stable=True).indices[:5]
        expected = firing[order]
        assert [r[0] for r in got] == list(range(expected.numel()))
        assert [r[2] * CONTEXT + r[3] for r in got] == locs[expected].tolist()
        assert [r[1] for r in got] == pytest.approx(f[expected, i].tolist())


def test_windows_show_the_store_tokens_and_the_feature(db, sae, store):
    f, locs = encoded(sae, store)
    tokens = torch.cat([meta["token_ids"].long() for _, meta in store.rows(SITE, "all")])
    row_of = {loc: r for r, loc in enumerate(locs.tolist())}
    examples = table(
        db,
        "SELECT feature, kind, activation, context, position, tokens, acts, centre FROM examples",
    )
    assert {e[1] for e in examples} == {"top", "quantile", "random"}
    cfg = AnalyzeConfig(window=WINDOW)
    for feature, _kind, activation, context, position, toks, acts, centre in examples:
        toks, acts = json.loads(toks), json.loads(acts)
        centre_row = row_of[context * CONTEXT + position]
        first = centre_row - centre
        assert 0 <= centre < len(toks) == len(acts) <= cfg.window
        assert centre <= cfg.window_before and len(toks) - centre - 1 <= cfg.window_after
        window_locs = locs[first : first + len(toks)]
        assert (window_locs // CONTEXT == context).all()  # never across contexts
        assert toks == tokens[first : first + len(toks)].tolist()
        assert acts == pytest.approx(f[first : first + len(toks), feature].tolist(), rel=1e-3)
        assert acts[centre] == pytest.approx(activation, rel=1e-3, abs=1e-6)
    # Windows stop at context edges only: one of the top examples has a full window.
    assert max(len(json.loads(e[5])) for e in examples) == cfg.window


@pytest.mark.parametrize("cache_entries", [0, 2000])  # no cache; a cache of the first rows
def test_windows_without_the_code_cache_are_the_same(
    db, sae, store, tiny_llama, tmp_path, cache_entries
):
    out = analyze(
        sae,
        store,
        model=tiny_llama,
        out=tmp_path / "f.db",
        top_n=5,
        window=WINDOW,
        cache_entries=cache_entries,
        **OPTIONS,
    )
    sql = (
        "SELECT feature, kind, bucket, rank, context, position, tokens, centre, acts FROM examples"
    )
    cached, encoded_again = (
        table(db, sql + " ORDER BY 1, 2, 3, 4"),
        table(out, sql + " ORDER BY 1, 2, 3, 4"),
    )
    assert [r[:8] for r in cached] == [r[:8] for r in encoded_again]
    for a, b in zip(cached, encoded_again, strict=True):
        assert json.loads(a[8]) == pytest.approx(json.loads(b[8]), rel=2e-3, abs=1e-6)


def test_random_examples_do_not_fire(db, sae, store):
    f, locs = encoded(sae, store)
    row_of = {loc: r for r, loc in enumerate(locs.tolist())}
    rows = table(
        db,
        "SELECT feature, rank, context, position, activation FROM examples WHERE kind = 'random'",
    )
    per_feature: dict[int, list] = {}
    for feature, rank, context, position, activation in rows:
        assert activation == 0 and f[row_of[context * CONTEXT + position], feature] == 0
        per_feature.setdefault(feature, []).append((rank, context * CONTEXT + position))
    alive = set((f > 0).any(0).nonzero().flatten().tolist())
    assert set(per_feature) == alive
    for samples in per_feature.values():
        assert sorted(r for r, _ in samples) == list(range(10))
        assert len({loc for _, loc in samples}) == 10


def test_quantile_samples_lie_in_their_intervals(db, sae, store):
    f, locs = encoded(sae, store)
    row_of = {loc: r for r, loc in enumerate(locs.tolist())}
    maxima = dict(table(db, "SELECT id, max_act FROM features"))
    rows = table(
        db,
        "SELECT feature, bucket, rank, activation, context, position FROM examples "
        "WHERE kind = 'quantile'",
    )
    assert rows
    groups: dict[tuple, list] = {}
    for feature, bucket, rank, activation, context, position in rows:
        top = maxima[feature]
        assert bucket * top / 10 * (1 - 1e-6) <= activation <= (bucket + 1) * top / 10 * (1 + 1e-6)
        assert activation == pytest.approx(float(f[row_of[context * CONTEXT + position], feature]))
        groups.setdefault((feature, bucket), []).append(rank)
    assert all(sorted(r) == list(range(len(r))) and len(r) <= 3 for r in groups.values())


def accumulate(sae, store, batch_size: int, quantile_examples: int = 3, seed: int = 0):
    f, locs = encoded(sae, store)
    acc = Accumulator(
        sae.cfg.n_features,
        top_n=5,
        n_quantiles=10,
        quantile_examples=quantile_examples,
        random_examples=2,
        n_bins=20,
        seed=seed,
        neighbour_index=torch.zeros(sae.cfg.n_features, 0, dtype=torch.int64),
    )
    for rows in torch.arange(f.shape[0]).split(batch_size):
        acc.update(f[rows], locs[rows])
    return acc


def test_interval_samples_are_exact_when_the_max_is_a_power_of_two():
    """With max = 2^e the final intervals are unions of whole fine ones, so the samples must be
    the brute-force smallest hash keys of each interval, however the stream was batched and
    however often the running max doubled on the way."""
    gen = torch.Generator().manual_seed(0)
    n, n_features, q, m = 3000, 6, 10, 3
    f = torch.rand(n, n_features, generator=gen) * 8.0
    f[torch.rand(n, n_features, generator=gen) < 0.6] = 0  # sparse
    f[:, 1] *= torch.linspace(0.001, 1, n)  # a max that keeps growing through the stream
    f[-5, :] = 8.0  # the max: 2^3, reached at the end
    locs = torch.arange(n, dtype=torch.int64) * 7 + 3
    results = []
    for batch in (64, 1000):
        acc = Accumulator(
            n_features,
            top_n=4,
            n_quantiles=q,
            quantile_examples=m,
            random_examples=0,
            n_bins=10,
            seed=5,
            neighbour_index=torch.zeros(n_features, 0, dtype=torch.int64),
        )
        for rows in torch.arange(n).split(batch):
            acc.update(f[rows], locs[rows])
        results.append([t.tolist() for t in acc.interval_examples()])
    assert results[0] == results[1]
    feature, interval, rank, _, got_locs = (torch.tensor(t) for t in results[0])
    for i in range(n_features):
        rows = (f[:, i] > 0).nonzero().flatten()
        which = (f[rows, i] * q / 8.0).long().clamp(max=q - 1)
        keys = hash_keys(locs[rows] * n_features + i, seed=5)
        for b in range(q):
            inside = rows[which == b]
            best = inside[keys[which == b].argsort()[:m]]
            mine = (feature == i) & (interval == b)
            assert got_locs[mine][rank[mine].argsort()].tolist() == locs[best].tolist()
    assert FINE_PER_INTERVAL >= 2


def test_results_do_not_depend_on_the_batch_size(sae, store):
    a, b = accumulate(sae, store, 97), accumulate(sae, store, 1000)
    for name in ("n_fired", "act_max", "hist", "top_values", "top_locs", "pool_locs"):
        assert torch.equal(a.state[name], b.state[name]), name
    for x, y in zip(a.interval_examples(), b.interval_examples(), strict=True):
        assert torch.equal(x, y)


# -- neighbours and logit effects -----------------------------------------------------------


def test_neighbours_equal_brute_force_cosine(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(300, 16, generator=gen)
    w[7] = 3 * w[100]  # an exact duplicate direction
    monkeypatch.setattr(neighbours_module, "BLOCK_ELEMENTS", 300 * 7)  # 7 rows a block
    index, cosine = cosine_neighbours(w, 5)
    unit = w / w.norm(dim=1, keepdim=True)
    full = unit @ unit.T
    full.fill_diagonal_(-2)
    expected = full.topk(5, dim=1)
    # Rows 7 and 100 tie as anyone's neighbours, so compare what was found, not the order of ties.
    torch.testing.assert_close(full.gather(1, index), expected.values)
    torch.testing.assert_close(cosine, expected.values)
    assert (index != torch.arange(300)[:, None]).all()
    assert (index[:7] == expected.indices[:7]).all()
    assert index[7, 0] == 100 and index[100, 0] == 7
    assert cosine[7, 0] == pytest.approx(1.0, abs=1e-6)


def test_neighbour_cooccurrence(db, sae, store):
    f, _ = encoded(sae, store)
    fires = f > 0
    for feature, _, neighbour, _, share in table(db, "SELECT * FROM neighbours")[:300]:
        n = int(fires[:, feature].sum())
        if n == 0:
            assert share is None
        else:
            both = int((fires[:, feature] & fires[:, neighbour]).sum())
            assert share == pytest.approx(both / n)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_logit_effects_equal_a_hand_computation(tiny_model_dirs, family):
    lm = load_model(str(tiny_model_dirs[family]), device="cpu")
    norm = lm.model.model.norm if family == "llama" else lm.model.transformer.ln_f
    with torch.no_grad():
        norm.weight.copy_(torch.rand(D, generator=torch.Generator().manual_seed(2)) + 0.5)
    directions = torch.randn(5, D, generator=torch.Generator().manual_seed(3))
    top_ids, top_eff, bottom_ids, bottom_eff = logit_effects(directions, lm, 4)
    unembed = lm.model.get_output_embeddings().weight.detach()[: len(lm.tokenizer)]
    for i, d in enumerate(directions):
        u = d / d.norm()
        if family == "gpt2":  # LayerNorm removes the mean; RMSNorm does not
            u = u - u.mean()
        effects = unembed @ (norm.weight.detach() * u)
        expected = effects.topk(4)
        assert top_ids[i].tolist() == expected.indices.tolist()
        torch.testing.assert_close(top_eff[i], expected.values)
        low = effects.topk(4, largest=False)
        assert bottom_ids[i].tolist() == low.indices.tolist()
        torch.testing.assert_close(bottom_eff[i], low.values)


def test_logit_columns_and_vocab(db, tiny_llama):
    vocab = table(db, "SELECT id, text FROM vocab ORDER BY id")
    assert [t for _, t in vocab] == token_texts(tiny_llama.tokenizer, len(tiny_llama.tokenizer))
    assert len(vocab) == len(tiny_llama.tokenizer)
    top, bottom = table(db, "SELECT logit_top, logit_bottom FROM features WHERE id = 3")[0]
    top, bottom = json.loads(top), json.loads(bottom)
    assert len(top) == len(bottom) == 10
    assert all(vocab[i][1] == text for i, text, _ in top + bottom)
    assert [e for *_, e in top] == sorted((e for *_, e in top), reverse=True)
    assert top[-1][2] > bottom[-1][2]


# -- resume, refusals ---------------------------------------------------------------------


class Killed(Exception):
    pass


def dump(db) -> dict:
    """Every table's rows, and meta without its timestamps."""
    conn = sqlite3.connect(db)
    out = {
        t: conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall()
        for t in ("features", "examples", "neighbours", "vocab")
    }
    meta = read_meta(conn)
    for key in ("created_at", "seconds"):
        meta.pop(key)
    conn.close()
    return {**out, "meta": meta}


def test_a_killed_run_resumes_exactly(sae, store, tiny_llama, tmp_path, monkeypatch):
    options = dict(OPTIONS, batch_size=128, checkpoint_every=3)
    reference = analyze(sae, store, model=tiny_llama, out=tmp_path / "ref.db", **options)
    out = tmp_path / "features.db"
    real_encode, calls = analyze_runner.encode, []

    def dying(sae_, x):
        calls.append(1)
        if len(calls) == 11:  # batch 11: the last checkpoint was after batch 9
            raise Killed
        return real_encode(sae_, x)

    with monkeypatch.context() as m:
        m.setattr(analyze_runner, "encode", dying)
        with pytest.raises(Killed):
            analyze(sae, store, model=tiny_llama, out=out, **options)
    meta = read_meta(open_readonly(out))
    assert meta["complete"] is False and 8 * 100 < meta["tokens_seen"] <= 9 * 128
    assert not table(out, "SELECT * FROM features")
    assert (tmp_path / "features.db.progress.safetensors").exists()
    calls.clear()
    with monkeypatch.context() as m:
        m.setattr(analyze_runner, "encode", lambda s, x: calls.append(1) or real_encode(s, x))
        analyze(sae, store, model=tiny_llama, out=out, **options)
    assert len(calls) > 10  # the rest of the pass (not all of it), then the windows
    assert dump(out) == dump(reference)


def test_a_killed_run_resumes_from_a_moved_store(sae, store, tiny_llama, tmp_path, monkeypatch):
    """Issue 22: the progress file identifies the run by content; paths are recorded only."""
    options = dict(OPTIONS, batch_size=128, checkpoint_every=3)
    reference = analyze(sae, store, model=tiny_llama, out=tmp_path / "ref.db", **options)
    out = tmp_path / "features.db"
    real_encode, calls = analyze_runner.encode, []

    def counting(limit):
        def encode(sae_, x):
            calls.append(1)
            if len(calls) == limit:
                raise Killed
            return real_encode(sae_, x)

        return encode

    with monkeypatch.context() as m:
        m.setattr(analyze_runner, "encode", counting(11))
        with pytest.raises(Killed):
            analyze(sae, store, model=tiny_llama, out=out, **options)
    moved = ActivationStore(shutil.copytree(store.path, tmp_path / "moved_acts"))
    calls.clear()
    with monkeypatch.context() as m:
        m.setattr(analyze_runner, "encode", counting(0))
        analyze(sae, moved, model=tiny_llama, out=out, **options)
    resumed_calls = len(calls)
    calls.clear()
    with monkeypatch.context() as m:
        m.setattr(analyze_runner, "encode", counting(0))
        analyze(sae, moved, model=tiny_llama, out=tmp_path / "full.db", **options)
    assert resumed_calls <= len(calls) - 9  # the nine checkpointed batches were not redone
    ignore = ("acts", "created_at", "seconds")
    resumed, expected = dump(out), dump(reference)
    for d in (resumed, expected):
        d["meta"] = {k: v for k, v in d["meta"].items() if k not in ignore}
    assert resumed == expected
    assert not (tmp_path / "features.db.progress.safetensors").exists()
    assert not (tmp_path / "features.db.lock").exists()


def test_existing_stores_are_reused_or_refused(sae, store, tiny_llama, tmp_path, capsys):
    out = tmp_path / "features.db"
    analyze(sae, store, model=tiny_llama, out=out, **OPTIONS)
    analyze(sae, store, model=tiny_llama, out=out, **OPTIONS)
    assert "already complete" in capsys.readouterr().err
    other = make_sae(seed=1)
    with pytest.raises(
        FeatureStoreError, match=r"another run \(sae: .* there, .* asked\)\. Pass --overwrite"
    ):
        analyze(other, store, model=tiny_llama, out=out, **OPTIONS)
    with pytest.raises(FeatureStoreError, match=r"params.top_n: 20 there, 3 asked"):
        analyze(sae, store, model=tiny_llama, out=out, **dict(OPTIONS, top_n=3))
    analyze(other, store, model=tiny_llama, out=out, overwrite=True, **OPTIONS)
    assert read_meta(open_readonly(out))["sae"]["sha256"] != ""
    not_a_store = tmp_path / "notes.db"
    not_a_store.write_text("my notes")
    with pytest.raises(FeatureStoreError, match="not a feature store"):
        analyze(sae, store, model=tiny_llama, out=not_a_store, **OPTIONS)
    assert not_a_store.read_text() == "my notes"


def test_a_second_writer_is_refused(sae, store, tiny_llama, tmp_path):
    out = tmp_path / "features.db"
    with writer_lock(out), pytest.raises(FeatureStoreError, match=r"another .*pid \d+"):
        analyze(sae, store, model=tiny_llama, out=out, **OPTIONS)
    assert not out.exists()


def test_an_sae_of_another_width_is_refused(store, tiny_llama, tmp_path):
    with pytest.raises(StoreError, match=r"d_in 48.*width 32"):
        analyze(make_sae(d_in=48), store, model=tiny_llama, out=tmp_path / "f.db", **OPTIONS)
    assert not (tmp_path / "f.db").exists()


def test_a_missing_model_is_an_error_unless_logits_are_off(sae, store, tmp_path, capsys):
    out = tmp_path / "f.db"
    with pytest.raises(ValueError, match=r"logit effects need the model.*--no-logits"):
        analyze(sae, store, model=str(tmp_path / "nowhere"), out=out, **OPTIONS)
    assert not out.exists()
    analyze(sae, store, model=str(tmp_path / "nowhere"), out=out, logits=False, **OPTIONS)
    assert "warning" in capsys.readouterr().err
    assert table(out, "SELECT logit_top FROM features LIMIT 1") == [(None,)]
    assert not table(out, "SELECT * FROM vocab")


def test_the_map_needs_its_extra(sae, store, tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "umap", None)  # import umap now raises ImportError
    with pytest.raises(ImportError, match=r"monoscope\[map\].*--no-map"):
        analyze(sae, store, model=tiny_llama, out=tmp_path / "f.db", map=True, progress=False)
    assert not (tmp_path / "f.db").exists()


def test_relu_sae_split_and_max_tokens(store, tiny_llama, tmp_path):
    sae = make_sae("relu")
    out = analyze(
        sae,
        store,
        model=tiny_llama,
        out=tmp_path / "f.db",
        split="heldout",
        max_tokens=400,
        **OPTIONS,
    )
    f, locs = encoded(sae, store, "heldout")
    f, last = f[:400], int(locs[399])
    for context, position, tokens, centre in table(
        out, "SELECT context, position, tokens, centre FROM examples"
    ):
        end = context * CONTEXT + position + len(json.loads(tokens)) - centre - 1
        assert end <= last  # windows stay within the analysed tokens
    rows = table(out, "SELECT n_fired, max_act FROM features ORDER BY id")
    assert [r[0] for r in rows] == (f > 0).sum(0).tolist()
    assert read_meta(open_readonly(out))["acts"]["n_tokens"] == 400
    assert [r[1] for r in rows] == pytest.approx(f.max(0).values.tolist(), rel=1e-6)


def test_cli_and_parquet_export(sae, store, tmp_path, tiny_llama):
    import pyarrow.parquet as pq

    sae.save(tmp_path / "sae")
    out = tmp_path / "features.db"
    argv = [
        "analyze",
        "--sae",
        str(tmp_path / "sae"),
        "--acts",
        str(store.path),
        "--out",
        str(out),
        "--no-map",
        "--no-progress",
        "--export",
        "parquet",
        "--top-n",
        "3",
        "--batch-size",
        "512",
    ]
    assert main(argv) == 0
    meta = read_meta(open_readonly(out))
    assert meta["params"]["top_n"] == 3 and meta["sae"]["path"] == str(tmp_path / "sae")
    from monoscope.artifacts import sha256_file

    assert meta["sae"]["sha256"] == sha256_file(tmp_path / "sae" / "weights.safetensors")
    for name in ("meta", "features", "examples", "neighbours", "vocab"):
        parquet = pq.read_table(tmp_path / f"features.{name}.parquet")
        assert parquet.num_rows == table(out, f"SELECT count(*) FROM {name}")[0][0] > 0
    assert main([*argv[:5], "--out", str(tmp_path / "x.db"), "--split", "nope"]) == 2


def test_config_validation():
    with pytest.raises(ValueError, match="split"):
        AnalyzeConfig(split="test")
    with pytest.raises(ValueError, match="top_n"):
        AnalyzeConfig(top_n=0)
    with pytest.raises(ValueError, match="export"):
        AnalyzeConfig(export="csv")
    cfg = AnalyzeConfig(window=32)
    assert cfg.window_before + 1 + cfg.window_after == 32
    assert "out" not in cfg.params() and "top_n" in cfg.params()


@pytest.mark.parametrize("where", ["data", "header"])
def test_a_corrupt_progress_file_is_named_not_resumed(
    sae, store, tiny_llama, tmp_path, monkeypatch, where
):
    """Issue 22, point 5: a flipped byte in the progress checkpoint is a clear error."""
    from monoscope.analyze.checkpoint import CorruptCheckpointError

    options = dict(OPTIONS, batch_size=128, checkpoint_every=3)
    out = tmp_path / "features.db"
    real_encode, calls = analyze_runner.encode, []

    def dying(sae_, x):
        calls.append(1)
        if len(calls) == 11:
            raise Killed
        return real_encode(sae_, x)

    with monkeypatch.context() as m:
        m.setattr(analyze_runner, "encode", dying)
        with pytest.raises(Killed):
            analyze(sae, store, model=tiny_llama, out=out, **options)
    progress = tmp_path / "features.db.progress.safetensors"
    data = bytearray(progress.read_bytes())
    data[-5 if where == "data" else 20] ^= 0x55
    progress.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError, match=r"progress\.safetensors .*delete"):
        analyze(sae, store, model=tiny_llama, out=out, **options)
    progress.unlink()  # as the message says: the pass starts over
    reference = analyze(sae, store, model=tiny_llama, out=tmp_path / "ref.db", **options)
    analyze(sae, store, model=tiny_llama, out=out, **options)
    assert dump(out) == dump(reference)
