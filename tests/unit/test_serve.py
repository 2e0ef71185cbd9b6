"""monoscope.serve's JSON API: list, search and sort against brute force over the database,
feature records against their rows, 404s, validation, path traversal on a real socket, and
"what fires" against the SAE run by hand."""

from __future__ import annotations

import http.client
import json
import sqlite3
from urllib.parse import urlsplit

import pytest
import torch

from monoscope.analyze.schema import FeatureStoreError
from monoscope.artifacts import sha256_file
from monoscope.sae import load_sae
from monoscope.serve import FeatureStore, open_app
from monoscope.serve.app import create_app
from monoscope.serve.catalog import token_key
from monoscope.testing import random_feature_store, tiny_sae
from monoscope.web.server import background_server

fastapi_testclient = pytest.importorskip("fastapi.testclient", reason="needs monoscope[serve]")
TestClient = fastapi_testclient.TestClient

SITE = "blocks.1.hook_resid_post"
EXPLANATIONS = {3: "The Golden Gate Bridge", 10: "golden retrievers", 40: "Bridge tolls"}


@pytest.fixture(scope="module")
def db(tiny_llama, tiny_model_dirs, tmp_path_factory):
    """A random store over the tiny llama's byte vocabulary, naming that model and a tiny SAE
    (so "what fires" runs for real)."""
    root = tmp_path_factory.mktemp("serve")
    sae = tiny_sae(tiny_llama, SITE)
    sae.save(root / "sae")
    tok = tiny_llama.tokenizer
    vocab = [tok.decode([i]) for i in range(len(tok))]
    meta = {
        "model": {"name": str(tiny_model_dirs["llama"]), "revision": None},
        "sae": {
            "path": str(root / "sae"),
            "sha256": sha256_file(root / "sae" / "weights.safetensors"),
            "arch": "topk",
            "n_features": sae.cfg.n_features,
            "d_in": sae.cfg.d_in,
            "site": SITE,
            "model": str(tiny_model_dirs["llama"]),
            "activation_convention": "f",
        },
    }
    return random_feature_store(
        root / "features.db",
        n_features=sae.cfg.n_features,
        vocab=vocab,
        explanations=EXPLANATIONS,
        meta=meta,
    )


@pytest.fixture(scope="module")
def client(db):
    app, _ = open_app(db)
    return TestClient(app)


def brute_force_tokens(db) -> dict[int, set[str]]:
    """feature -> token keys it fires on in its top examples, straight from the tables."""
    conn = sqlite3.connect(db)
    vocab = dict(conn.execute("SELECT id, text FROM vocab"))
    fired: dict[int, set[str]] = {}
    for fid, tokens, acts in conn.execute(
        "SELECT feature, tokens, acts FROM examples WHERE kind = 'top'"
    ):
        keys = fired.setdefault(fid, set())
        for t, a in zip(json.loads(tokens), json.loads(acts), strict=True):
            if a > 0:
                keys.add(token_key(vocab[t]))
    return fired


def ids(client, **params) -> list[int]:
    response = client.get("/api/features", params=params)
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["items"]]


def test_meta_describes_the_store(client, db):
    meta = client.get("/api/meta").json()
    assert meta["n_features"] == 128 and meta["label"] == "128" and meta["complete"] is True
    assert meta["has_explanations"] and meta["has_map"]
    assert len(meta["hist_edges"]) == 41 and meta["sae"]["site"] == SITE


def test_pages_cover_every_feature_once(client):
    seen, offset = [], 0
    while True:
        page = client.get("/api/features", params={"offset": offset, "limit": 50}).json()
        assert page["total"] == 128
        if not page["items"]:
            break
        seen += [item["id"] for item in page["items"]]
        offset += 50
    assert seen == list(range(128))


@pytest.mark.parametrize("sort", ["density", "max_act"])
@pytest.mark.parametrize("order", ["asc", "desc"])
def test_sort_matches_the_database(client, db, sort, order):
    conn = sqlite3.connect(db)
    values = dict(conn.execute(f"SELECT id, {sort} FROM features"))
    expected = sorted(values, key=lambda i: (-values[i] if order == "desc" else values[i], i))
    assert ids(client, sort=sort, order=order, limit=500) == expected
    assert ids(client, sort=sort, order=order, offset=10, limit=5) == expected[10:15]


def test_token_search_matches_brute_force(client, db):
    fired = brute_force_tokens(db)

    def matches(f: int, word: str) -> bool:
        return word in fired.get(f, ()) or word in EXPLANATIONS.get(f, "").lower()

    counts: dict[str, int] = {}
    for keys in fired.values():
        for key in keys:
            counts[key] = counts.get(key, 0) + 1
    # A token some features fire on and others not, searched in mixed case with spaces.
    key = next(k for k, n in sorted(counts.items()) if 2 <= n < 100 and k.isalpha())
    expected = [f for f in range(128) if matches(f, key)]
    assert ids(client, query=f"  {key.upper()} ", limit=500) == expected
    # Several words: every one must match.
    other = next(k for k in sorted(counts) if k != key and k.isalpha())
    both = [f for f in range(128) if matches(f, key) and matches(f, other)]
    assert 0 < len(both) < len(expected)
    assert ids(client, query=f"{key} {other}", limit=500) == both


def test_explanation_and_id_search(client):
    assert 3 in ids(client, query="golden gate") and 10 not in ids(client, query="golden gate")
    assert {3, 10} <= set(ids(client, query="GOLDEN"))
    assert ids(client, query="#12") == [12] and ids(client, query="40") == [40]
    assert ids(client, query="#128") == []


def test_feature_record_matches_its_rows(client, db):
    record = client.get("/api/features/7").json()
    conn = sqlite3.connect(db)
    vocab = dict(conn.execute("SELECT id, text FROM vocab"))
    n_fired, max_act, hist = conn.execute(
        "SELECT n_fired, max_act, hist FROM features WHERE id = 7"
    ).fetchone()
    assert record["id"] == 7 and record["n_fired"] == n_fired
    assert record["max_act"] == pytest.approx(max_act, rel=1e-5)
    assert record["hist"] == json.loads(hist)
    top = conn.execute(
        "SELECT tokens, acts, centre FROM examples WHERE feature = 7 AND kind = 'top' ORDER BY rank"
    ).fetchall()
    assert len(record["examples"]["top"]) == len(top) == 20
    for shown, (tokens, acts, centre) in zip(record["examples"]["top"], top, strict=True):
        assert shown["tokens"] == [vocab[t] for t in json.loads(tokens)]
        assert shown["acts"] == pytest.approx(json.loads(acts), rel=1e-3)
        assert shown["centre"] == centre
    assert len(record["examples"]["quantile"]) == 20
    assert record["examples"]["random"] == []  # only the windows a scorer's judge graded
    neighbours = conn.execute(
        "SELECT neighbour FROM neighbours WHERE feature = 7 ORDER BY rank"
    ).fetchall()
    assert [n["id"] for n in record["neighbours"]] == [n for (n,) in neighbours]
    assert record["logit_top"][0][2] >= record["logit_top"][-1][2]


@pytest.mark.parametrize("fid", ["-1", "128", "abc", "1.5", "1_0", "99999999999999999999999"])
def test_unknown_feature_is_404(client, fid):
    response = client.get(f"/api/features/{fid}")
    assert response.status_code == 404
    assert "no feature" in response.json()["detail"]


@pytest.mark.parametrize(
    "params",
    [{"sort": "bogus"}, {"order": "up"}, {"limit": 0}, {"limit": 501}, {"offset": -1}],
)
def test_bad_list_parameters_are_422(client, params):
    assert client.get("/api/features", params=params).status_code == 422


def test_front_end_is_served(client):
    page = client.get("/")
    assert page.status_code == 200 and 'src="config.js"' in page.text
    config = client.get("/config.js")
    assert '"mode": "live"' in config.text and config.headers["content-type"].startswith(
        "text/javascript"
    )
    assert client.get("/assets/js/feature.js").status_code == 200
    assert client.get("/assets/js/nothing.js").status_code == 404


def test_map_lists_every_feature(client):
    points = client.get("/api/map").json()
    assert points["ids"] == list(range(128)) and len(points["x"]) == len(points["y"]) == 128


@pytest.mark.parametrize(
    "path",
    [
        "/assets/../app.py",
        "/assets/../../serve/app.py",
        "/assets/%2e%2e/app.py",
        "/assets/%2E%2E/%2e%2e/serve/app.py",
        "/assets/..%2f..%2fserve%2fapp.py",
        "/assets/js/../../../app.py",
        "/assets/%2e%2e%2f%2e%2e%2f%2e%2e%2fpyproject.toml",
        "/assets//etc/passwd",
        "/assets/..\\app.py",
    ],
)
def test_static_routes_resist_path_traversal(server, path):
    status, body = raw_get(server, path)
    assert status in (400, 404), (path, status)
    assert "create_app" not in body and "root:" not in body and "[project]" not in body


def test_raw_requests_reach_the_assets(server):
    status, body = raw_get(server, "/assets/js/%63ore.js")  # the control: %63 is "c"
    assert status == 200 and "MS.h = function" in body


@pytest.fixture(scope="module")
def server(db):
    app, _ = open_app(db)
    with background_server(app) as url:
        yield url


def raw_get(url: str, path: str) -> tuple[int, str]:
    """GET `path` as written, on a real socket: no client normalises it first."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        conn.close()


def test_what_fires_matches_the_sae(client, tiny_llama, db):
    text = "the model reads a token"
    result = client.post("/api/fires", json={"text": text}).json()
    assert result["n_tokens"] == len(text.encode()) == len(result["tokens"])
    # The same computation by hand: BOS, the text, the site, the SAE.
    store = FeatureStore(db)
    sae = load_sae(store.meta["sae"]["path"])
    tok = tiny_llama.tokenizer
    ids_ = tok(text, add_special_tokens=False)["input_ids"]
    x = tiny_llama.capture(torch.tensor([[tok.bos_token_id, *ids_]]), [SITE])[SITE][0, 1:]
    with torch.no_grad():
        acts = sae.encode(x)
    for i, token in enumerate(result["tokens"]):
        assert token["text"] == store.vocab[ids_[i]]
        fired = [f for f, _ in token["features"]]
        expected = [f for f in acts[i].topk(8).indices.tolist() if acts[i, f] > 0]
        assert fired == expected
        values = [v for _, v in token["features"]]
        assert values == sorted(values, reverse=True)
    named = {int(f) for f in result["features"]}
    assert named == {f for t in result["tokens"] for f, _ in t["features"]}


@pytest.mark.parametrize(
    "body, status, message",
    [
        ({"text": ""}, 422, "empty"),
        ({"text": "   \n "}, 422, "empty"),
        ({"text": "a " * 300}, 413, "limit is 512"),
        ({}, 422, None),
        ({"text": 5}, 422, None),
    ],
)
def test_what_fires_validates_its_input(client, body, status, message):
    response = client.post("/api/fires", json=body)
    assert response.status_code == status
    if message:
        assert message in response.json()["detail"]


def test_what_fires_refuses_a_changed_sae(db, tmp_path):
    conn = sqlite3.connect(db)
    changed = tmp_path / "features.db"
    conn.execute(f"VACUUM INTO '{changed}'")
    conn.close()
    with sqlite3.connect(changed) as out:
        sae = json.loads(out.execute("SELECT value FROM meta WHERE key = 'sae'").fetchone()[0])
        out.execute(
            "UPDATE meta SET value = ? WHERE key = 'sae'",
            (json.dumps({**sae, "sha256": "0" * 64}),),
        )
    app, _ = open_app(changed)
    response = TestClient(app).post("/api/fires", json={"text": "the model"})
    assert response.status_code == 503 and "has changed" in response.json()["detail"]


def test_what_fires_is_off_without_an_engine(db):
    response = TestClient(create_app(FeatureStore(db))).post("/api/fires", json={"text": "a"})
    assert response.status_code == 503


def test_missing_garbage_and_other_version_stores_are_refused(tmp_path, db):
    with pytest.raises(FeatureStoreError, match="no such feature store"):
        FeatureStore(tmp_path / "none.db")
    (tmp_path / "junk.db").write_bytes(b"not a database at all" * 100)
    with pytest.raises(FeatureStoreError, match="not a monoscope feature store"):
        FeatureStore(tmp_path / "junk.db")
    other = tmp_path / "v99.db"
    random_feature_store(other, n_features=4)
    with sqlite3.connect(other) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(FeatureStoreError, match="schema version 99"):
        FeatureStore(other)


def test_incomplete_stores(tmp_path):
    empty = tmp_path / "empty.db"
    random_feature_store(empty, n_features=0, meta={"complete": False, "tokens_seen": 500})
    with pytest.raises(FeatureStoreError, match="incomplete"):
        FeatureStore(empty)
    partial = random_feature_store(tmp_path / "partial.db", n_features=5, meta={"complete": False})
    meta = TestClient(open_app(partial)[0]).get("/api/meta").json()
    assert meta["complete"] is False and meta["n_features"] == 5  # the page shows a banner


def test_a_locked_store_is_named_as_such(tmp_path):
    path = random_feature_store(tmp_path / "locked.db", n_features=4)
    writer = sqlite3.connect(path)
    writer.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(FeatureStoreError, match="locked by another process"):
            FeatureStore(path)
    finally:
        writer.rollback()
        writer.close()


# -- ports: one line, and the address printed only once it is bound ------------------------------


@pytest.mark.parametrize("port", ["80000", "-1"])
def test_a_port_out_of_range_is_one_line(db, port, capsys):
    from monoscope.cli import main

    assert main(["serve", str(db), "--port", port]) == 2
    out, err = capsys.readouterr()
    assert "browsing" not in out
    assert err.count("\n") == 1 and "0 to 65535" in err


def test_a_port_in_use_is_one_line_and_nothing_says_browsing(db, capsys):
    import socket

    from monoscope.cli import main

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = str(taken.getsockname()[1])
        assert main(["serve", str(db), "--port", port]) == 2
    finally:
        taken.close()
    out, err = capsys.readouterr()
    assert "browsing" not in out
    assert f"cannot listen on 127.0.0.1:{port}: it is in use" in err
