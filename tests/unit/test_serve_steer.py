"""monoscope.serve's steering and attribution endpoints on a tiny random model and SAE: result
shapes, strengths in units of the store's max activation, the attribution totals against the
attribution pass run by hand, validation (404, 422, 503), and concurrent requests."""

from __future__ import annotations

import json
import sqlite3
import threading

import pytest

from monoscope.artifacts import sha256_file
from monoscope.sae import load_sae
from monoscope.serve import FeatureStore, open_app
from monoscope.serve.app import create_app
from monoscope.serve.steering import MAX_NEW_TOKENS, PER_POSITION
from monoscope.steer import attribution_pass, encode_prompt, single_token
from monoscope.testing import random_feature_store, tiny_sae
from monoscope.web.server import background_server

fastapi_testclient = pytest.importorskip("fastapi.testclient", reason="needs monoscope[serve]")
TestClient = fastapi_testclient.TestClient

SITE = "blocks.1.hook_resid_post"
PROMPT = "the model reads"
FEATURE = 5


@pytest.fixture(scope="module")
def db(tiny_llama, tiny_model_dirs, tmp_path_factory):
    """A random store naming the tiny llama and a tiny SAE saved beside it."""
    root = tmp_path_factory.mktemp("serve_steer")
    sae = tiny_sae(tiny_llama, SITE)
    sae.save(root / "sae")
    tok = tiny_llama.tokenizer
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
    vocab = [tok.decode([i]) for i in range(len(tok))]
    return random_feature_store(
        root / "features.db", n_features=sae.cfg.n_features, vocab=vocab, meta=meta
    )


@pytest.fixture(scope="module")
def client(db):
    return TestClient(open_app(db)[0])


def max_act(db, feature: int) -> float:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT max_act FROM features WHERE id = ?", (feature,)).fetchone()[0]


def steer(client, **body):
    request = {"feature": FEATURE, "prompt": PROMPT, "max_new_tokens": 6, "temperature": 0}
    return client.post("/api/steer", json={**request, **body})


def test_steer_returns_baseline_and_steered_runs(client, db):
    response = steer(client, strength=0)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["feature"] == FEATURE and result["chat"] is False  # no chat template
    assert result["sampling"] == {"max_new_tokens": 6, "temperature": 0.0, "seed": 0, "n": 1}
    assert result["prompt_tokens"][1:] == list(PROMPT)  # BOS, then byte tokens
    (base,), (run,) = result["baseline"], result["runs"]
    (edit,) = run["edits"]
    assert edit["mode"] == "clamp" and edit["relative"] and edit["absolute_value"] == 0
    assert edit["max_act"] == pytest.approx(max_act(db, FEATURE))
    (sample,) = run["samples"]
    assert 1 <= len(base["tokens"]) <= 6 and 1 <= len(sample["tokens"]) <= 6
    n = len(result["prompt_tokens"]) + len(sample["tokens"])
    assert len(sample["kl"]) == n - 1
    (achieved,) = sample["achieved"]
    assert achieved["feature"] == FEATURE and len(achieved["after"]) == n
    assert achieved["after"][0] is None  # BOS is never edited
    assert run["token_effects"][0]["feature"] == FEATURE
    assert len(run["token_effects"][0]["tokens"]) == 5
    assert sample["perplexity_unsteered"] > 1 and result["seconds"] > 0


def test_a_multiple_of_the_max_changes_the_output(client, db):
    strong = steer(client, strength=30).json()
    (sample,) = strong["runs"][0]["samples"]
    assert sample["text"] != strong["baseline"][0]["text"]
    assert sample["kl_mean_generated"] > 0.01
    edit = strong["runs"][0]["edits"][0]
    assert edit["absolute_value"] == pytest.approx(30 * max_act(db, FEATURE), rel=1e-6)
    # The same strength written as text, and as an absolute activation.
    as_text = steer(client, strength="30x", relative=False).json()
    assert as_text["runs"][0]["samples"][0]["text"] == sample["text"]
    absolute = steer(client, strength=30 * max_act(db, FEATURE), relative=False).json()
    assert absolute["runs"][0]["edits"][0]["relative"] is False
    assert absolute["runs"][0]["samples"][0]["text"] == sample["text"]


def test_other_modes_and_positions(client):
    ablated = steer(client, mode="ablate", strength="not used").json()
    assert ablated["runs"][0]["edits"][0]["mode"] == "ablate"
    doubled = steer(client, mode="multiply", strength=2).json()  # a factor, not a multiple
    assert (
        doubled["runs"][0]["edits"][0] | {"absolute_value": 2.0} == doubled["runs"][0]["edits"][0]
    )
    added = steer(client, mode="add", strength=3, positions="generated").json()
    sample = added["runs"][0]["samples"][0]
    prompt_len = len(added["prompt_tokens"])
    assert all(v is None for v in sample["achieved"][0]["after"][:prompt_len])
    assert max(sample["kl"][: prompt_len - 1]) < 1e-6  # the prompt is not steered


@pytest.mark.parametrize(
    "body, status, message",
    [
        ({"feature": 128}, 404, "no feature 128"),
        ({"feature": "abc"}, 404, "no feature"),
        ({"strength": "lots"}, 422, "not a number"),
        ({"strength": "2x", "mode": "multiply"}, 422, "plain factor"),
        ({"mode": "boost"}, 422, "unknown mode"),
        ({"positions": "middle"}, 422, "positions must be"),
        ({"prompt": "  "}, 422, "prompt is empty"),
        ({"prompt": "a" * 250}, 422, "251 tokens plus 6 to generate, over the context"),
        ({"max_new_tokens": MAX_NEW_TOKENS + 1}, 422, "max_new_tokens must be"),
        ({"temperature": -1}, 422, "temperature"),
        ({"seed": -1}, 422, "seed"),
        ({"chat": True}, 422, "no chat template"),
    ],
)
def test_steer_validates_its_input(client, body, status, message):
    response = steer(client, **body)
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]


def test_attribution_totals_match_the_attribution_pass(client, db, tiny_llama):
    response = client.post("/api/attribute", json={"prompt": PROMPT, "target": "e", "top": 6})
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["target"]["text"] == "e" and result["target"]["source"] == "given"
    rows = result["rows"]
    assert len(rows) == 6 and all(r["ablation"] is not None for r in rows)
    sizes = [abs(r["attribution"]) for r in rows]
    assert sizes == sorted(sizes, reverse=True)
    assert {str(r["feature"]) for r in rows} <= set(result["features"])
    assert len(result["position_totals"]) == len(result["tokens"]) == len(PROMPT) + 1
    assert all(len(p["features"]) <= PER_POSITION for p in result["by_position"])
    # Totals over every active feature, from the attribution pass run by hand.
    sae = load_sae(FeatureStore(db).meta["sae"]["path"])
    ids = encode_prompt(tiny_llama, PROMPT)
    _, attributions, _, _ = attribution_pass(tiny_llama, sae, ids, single_token(tiny_llama, "e"))
    assert result["position_totals"] == pytest.approx(attributions.sum(-1).tolist(), abs=1e-5)


def test_attribution_defaults_to_the_models_token(client):
    result = client.post("/api/attribute", json={"prompt": PROMPT, "target": ""}).json()
    assert result["target"]["source"] == "model" and len(result["rows"]) <= 20


@pytest.mark.parametrize(
    "body, message",
    [
        ({"prompt": PROMPT, "target": "ab"}, "is 2 tokens ['a', 'b'], not one"),
        ({"prompt": ""}, "prompt is empty"),
        ({"prompt": PROMPT, "top": 0}, "top must be"),
        ({"prompt": "a" * 300}, "over the context length"),
    ],
)
def test_attribute_validates_its_input(client, body, message):
    response = client.post("/api/attribute", json=body)
    assert response.status_code == 422, response.text
    assert message in response.json()["detail"]


def test_prompts_over_the_servers_limit_are_refused(client, monkeypatch):
    monkeypatch.setattr("monoscope.serve.steering.MAX_PROMPT_TOKENS", 8)
    response = steer(client, prompt="a" * 12)
    assert response.status_code == 422
    assert response.json()["detail"].startswith("the prompt is 13 tokens long; the limit here is 8")
    response = client.post("/api/attribute", json={"prompt": "a" * 12})
    assert response.status_code == 422 and "the limit here is 8" in response.json()["detail"]


def test_an_sae_for_another_model_is_refused(db, tiny_model_dirs):
    other = next(path for family, path in tiny_model_dirs.items() if family != "llama")
    client = TestClient(open_app(db, model=str(other))[0])
    for response in (
        steer(client, strength=1, relative=False),
        client.post("/api/attribute", json={"prompt": PROMPT}),
    ):
        assert response.status_code == 503
        assert "was trained on model" in response.json()["detail"]


def test_model_endpoints_are_off_without_an_engine(db):
    client = TestClient(create_app(FeatureStore(db)))
    assert steer(client).status_code == 503
    assert client.post("/api/attribute", json={"prompt": PROMPT}).status_code == 503
    assert '"steer": null' in client.get("/config.js").text  # the page hides the panel


def test_config_tells_the_page_the_limits(client):
    config = client.get("/config.js").text
    limits = json.loads(config.split("MS.config = ")[1].rstrip(";\n"))["steer"]
    assert limits["max_new_tokens"] == MAX_NEW_TOKENS


def test_concurrent_requests_get_the_results_of_sequential_ones(db):
    """Steering hooks patch the one model in place: concurrent requests must not see each
    other's edits (the server runs them one at a time)."""
    import http.client
    from urllib.parse import urlsplit

    bodies = [
        {"feature": FEATURE, "prompt": PROMPT, "strength": s, "max_new_tokens": 8, "temperature": 0}
        for s in (0, 30, -30)
    ]
    app, _ = open_app(db)
    client = TestClient(app)
    sequential = [client.post("/api/steer", json=b).json()["runs"][0]["samples"] for b in bodies]
    fires = client.post("/api/fires", json={"text": PROMPT}).json()
    results: dict[int, object] = {}

    def post(i: int, path: str, body: dict) -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        conn.request("POST", path, json.dumps(body), {"content-type": "application/json"})
        response = conn.getresponse()
        results[i] = (response.status, response.read())
        conn.close()

    with background_server(app) as url:
        parts = urlsplit(url)
        jobs = [("/api/steer", b) for b in bodies] * 2 + [("/api/fires", {"text": PROMPT})] * 2
        threads = [threading.Thread(target=post, args=(i, *job)) for i, job in enumerate(jobs)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for i, (path, body) in enumerate(jobs):
        status, text = results[i]
        assert status == 200, text
        if path == "/api/fires":
            assert json.loads(text) == fires
        else:
            samples = json.loads(text)["runs"][0]["samples"]
            assert [s["text"] for s in samples] == [
                s["text"] for s in sequential[bodies.index(body)]
            ]
            assert samples[0]["kl"] == sequential[bodies.index(body)][0]["kl"]
