"""monoscope export-site: the static site's files, its data against the live API's records
(explanations, scores and the similar explanations embedded at export time included), refusing
to overwrite what is not a site, and leaving nothing behind on failure."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from monoscope.analyze.schema import FeatureStoreError
from monoscope.cli import main
from monoscope.interpret import embedding
from monoscope.serve import FeatureStore, export_site
from monoscope.serve.export import SITE_MARKER
from monoscope.testing import random_feature_store, write_interpretation

N = 100
EXPLANATIONS = {
    4: "bridges",
    40: "rivers and bridges",
    41: "cats",
    70: "kittens",
    99: "<img src=x onerror=alert(1)>",
}


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("export")
    path = random_feature_store(root / "features.db", n_features=N)
    return write_interpretation(path, EXPLANATIONS, {4: {"detection": 0.75, "simulation": 0.3}})


@pytest.fixture(scope="module")
def embedder():
    return embedding.SentenceEmbedder()


@pytest.fixture(scope="module")
def site(db, embedder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sites") / "site"
    return export_site(db, out, shard_size=32, similar=3, embedder=lambda: embedder)


def read_data(path: Path) -> tuple[str, object]:
    """(name, payload) of a data script `MS.receive("name",{...});`."""
    match = re.fullmatch(
        r'MS\.receive\(("[^"]+"),(.*)\);\n', path.read_text(encoding="utf-8"), re.S
    )
    assert match, f"{path} is not one MS.receive call"
    return json.loads(match.group(1)), json.loads(match.group(2))


def test_the_site_has_its_pages_and_data(site):
    for name in ("index.html", "config.js", "assets/style.css", "assets/js/main.js", SITE_MARKER):
        assert (site / name).is_file(), name
    config = (site / "config.js").read_text()
    assert '"mode": "static"' in config and '"shard_size": 32' in config
    shards = sorted((site / "data" / "features").iterdir())
    assert [p.name for p in shards] == ["0000.js", "0001.js", "0002.js", "0003.js"]
    assert not list(site.parent.glob(".site.*"))  # no temp folder left behind


def test_shards_hold_the_same_records_as_the_api(site, db):
    store = FeatureStore(db)
    seen = []
    for path in sorted((site / "data" / "features").iterdir()):
        name, shard = read_data(path)
        assert name == f"features/{path.stem}"
        assert shard["first"] == 32 * int(path.stem)
        for record in shard["features"]:
            similar = record.pop("similar")
            assert record == store.feature(record["id"])
            assert (similar == []) == (record["explanation"] is None)
            seen.append(record["id"])
    assert seen == list(range(N))


def test_index_search_and_map_files(site, db):
    store = FeatureStore(db)
    name, meta = read_data(site / "data" / "meta.js")
    assert name == "meta" and meta == json.loads(json.dumps(store.meta_record()))
    _, index = read_data(site / "data" / "index" / "0000.js")  # one shard: N < INDEX_SHARD
    assert index["first"] == 0 and index["max_act"] == store.catalog.max_act.tolist()
    assert index["explanation"][4] == "bridges" and index["top_tokens"] == store.catalog.top_tokens
    assert index["score"][4] == 0.75 and index["score"][40] is None
    _, search = read_data(site / "data" / "search" / "0000.js")  # one shard: few tokens
    assert search["tokens"] == store.catalog.token_index
    _, points = read_data(site / "data" / "map.js")
    assert points == store.map() and len(points["ids"]) == N


def test_the_site_holds_scores_and_similar_explanations(site, embedder):
    _, shard = read_data(site / "data" / "features" / "0000.js")
    record = shard["features"][4]
    assert [s["scorer"] for s in record["scores"]] == ["detection", "simulation"]
    assert record["scores"][0]["details"] and record["examples"]["random"]
    assert record["explanations"][0]["explanation"] == "bridges"
    # The nearest explanations, against the cosines computed here.
    ids = sorted(EXPLANATIONS)
    vectors = embedder.embed([EXPLANATIONS[i] for i in ids])
    cosine = vectors @ vectors.T  # [5, 5]
    for fid in ids:
        _, shard = read_data(site / "data" / "features" / f"{fid // 32:04d}.js")
        similar = shard["features"][fid % 32]["similar"]
        row = cosine[ids.index(fid)].clone()
        row[ids.index(fid)] = -torch.inf
        expected = [ids[j] for j in row.topk(3).indices.tolist()]
        assert [s["id"] for s in similar] == expected
        assert [s["similarity"] for s in similar] == pytest.approx(row.topk(3).values, abs=1e-3)
        assert similar[0]["explanation"] == EXPLANATIONS[expected[0]]
    assert similar_ids(site, 4)[0] == 40 and similar_ids(site, 41)[0] == 70
    config = (site / "config.js").read_text()
    assert '"similar": {"k": 3, "note": null}' in config


def similar_ids(site: Path, fid: int) -> list[int]:
    _, shard = read_data(site / "data" / "features" / f"{fid // 32:04d}.js")
    return [s["id"] for s in shard["features"][fid % 32]["similar"]]


def test_without_an_embedding_model_the_site_says_why(db, tmp_path, monkeypatch):
    monkeypatch.setattr(embedding, "EMBEDDING_PACKAGE", "no_such_embedding_package")
    with pytest.warns(UserWarning, match="exporting without similar explanations"):
        out = export_site(db, tmp_path / "site", shard_size=64)
    _, shard = read_data(out / "data" / "features" / "0000.js")
    assert all(record["similar"] is None for record in shard["features"])
    assert shard["features"][4]["scores"]  # everything else is there
    config = (out / "config.js").read_text()
    assert '"k": 0' in config and "monoscope[embed]" in config


def test_a_folder_that_is_not_a_site_is_never_overwritten(db, tmp_path):
    precious = tmp_path / "notes"
    precious.mkdir()
    (precious / "thesis.txt").write_text("years of work")
    with pytest.raises(ValueError, match="not a monoscope site"):
        export_site(db, precious)
    assert (precious / "thesis.txt").read_text() == "years of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        export_site(db, tmp_path / "file")


def test_a_site_is_replaced_whole(db, tmp_path):
    out = export_site(db, tmp_path / "site", shard_size=50, similar=0)
    (out / "data" / "features" / "stale.js").write_text("old")
    export_site(db, out, shard_size=64, similar=0)
    assert sorted(p.name for p in (out / "data" / "features").iterdir()) == ["0000.js", "0001.js"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]


def test_a_failed_export_leaves_the_old_site(db, tmp_path, monkeypatch):
    out = export_site(db, tmp_path / "site", shard_size=50, similar=0)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))

    def broken(self, start, stop):
        raise OSError("disk full")

    monkeypatch.setattr(FeatureStore, "feature_range", broken)
    with pytest.raises(OSError, match="disk full"):
        export_site(db, out, similar=0)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]


def test_an_empty_incomplete_store_is_refused(tmp_path):
    db = random_feature_store(tmp_path / "f.db", n_features=0, meta={"complete": False})
    with pytest.raises(FeatureStoreError, match="incomplete"):
        export_site(db, tmp_path / "site")
    assert not (tmp_path / "site").exists()


def test_cli_export_and_serve_errors(db, tmp_path, capsys):
    assert main(["export-site", str(db), "--out", str(tmp_path / "site")]) == 0
    assert "index.html" in capsys.readouterr().out
    assert main(["serve", str(tmp_path / "missing.db")]) == 2
    err = capsys.readouterr().err
    assert "no such feature store" in err and "Traceback" not in err
    assert main(["export-site", str(db), "--out", str(tmp_path / "s2"), "--shard-size", "0"]) == 2
