"""Hard negatives: neighbours' top windows on which the feature is silent, checked by encoding
the windows again from the activation store (each kept one brute-force checked here)."""

from __future__ import annotations

import sqlite3

import pytest
import torch

from monoscope.analyze import analyze
from monoscope.analyze.schema import read_meta
from monoscope.harvest import HarvestConfig
from monoscope.harvest import run as harvest
from monoscope.interpret.examples import load_features, read_vocab
from monoscope.interpret.negatives import WindowEncoder, hard_negatives
from monoscope.testing import tiny_sae

SITE = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def analysed(tiny_llama, corpus_file, tmp_path_factory):
    root = tmp_path_factory.mktemp("negatives")
    cfg = HarvestConfig(
        model=tiny_llama.name,
        sites=[SITE],
        corpus=str(corpus_file),
        tokens=3000,
        out=str(root / "acts"),
        context=32,
        shard_tokens=700,
        progress=False,
    )
    store = harvest(cfg, tiny_llama)
    sae = tiny_sae(tiny_llama, SITE, k=4)
    sae.save(root / "sae")
    db = analyze(
        root / "sae",
        store,
        model=tiny_llama,
        out=root / "features.db",
        map=False,
        top_n=6,
        window=16,
        progress=False,
    )
    return sqlite3.connect(db), sae, store, db


def test_kept_windows_are_silent_and_come_from_neighbours(analysed):
    conn, sae, store, db = analysed
    vocab = read_vocab(conn)
    ids = [fid for (fid,) in conn.execute("SELECT id FROM features WHERE n_fired > 0 LIMIT 12")]
    features = load_features(conn, ids, vocab)
    found = hard_negatives(conn, features, vocab, 4, WindowEncoder(read_meta(conn), db))
    assert sum(map(len, found.values())) > 0
    context = int(store.manifest["context"])
    xs, locs = [], []
    for acts, index in store.rows(SITE, "all"):
        xs.append(acts.float())
        locs.append(index["context_index"] * context + index["position"].long())
    row_of = {int(loc): i for i, loc in enumerate(torch.cat(locs))}
    with torch.no_grad():
        codes = sae.encode(torch.cat(xs))  # every stored token, brute force
    for fid, negatives in found.items():
        assert len(negatives) <= 4
        own = {(e.context, e.position) for e in features[fid].top + features[fid].quantile}
        for e in negatives:
            assert e.kind == "neighbour" and e.bucket in features[fid].neighbours
            assert (e.context, e.position) not in own and set(e.acts) == {0.0}
            first = e.context * context + e.position - e.centre
            rows = [row_of[first + i] for i in range(len(e.tokens))]
            assert float(codes[rows, fid].max()) <= 0  # silent on the whole window


def test_no_sae_path_names_the_way_out(analysed):
    conn, _, _, db = analysed
    meta = read_meta(conn)
    meta["sae"]["path"] = None
    with pytest.raises(ValueError, match="--hard-negatives 0"):
        WindowEncoder(meta, db)
