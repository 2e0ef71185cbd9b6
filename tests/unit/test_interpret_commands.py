"""`monoscope explain` / `score` end to end on a synthetic feature store with a fake backend:
rows written, nothing paid twice, the plan, the budget, skips and refusals."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from monoscope.analyze.schema import FeatureStoreError, write_meta
from monoscope.interpret import ExplainConfig, ScoreConfig, run
from monoscope.interpret.backends import factory
from monoscope.interpret.backends.base import Capabilities, ChatRequest, ChatResponse
from monoscope.testing import random_feature_store


class FakeBackend:
    """Answers every explain prompt with a phrase and every detection batch with 1s and 0s,
    counting what was sent."""

    name = "fake"
    capabilities = Capabilities(json_output=True)

    def __init__(self, model: str) -> None:
        self.model = model
        self.sent: list[ChatRequest] = []
        self.lock = threading.Lock()

    def chat(self, request: ChatRequest, timeout: float) -> ChatResponse:
        with self.lock:
            self.sent.append(request)
        prompt = request.messages[-1][1]
        text = "[1, 0, 1, 0, 1]" if "[" in prompt or "0" in prompt else "words w1 and w2"
        if request.max_tokens <= 64:  # the explainer's answer is one short phrase
            text = "the tokens w1 and w2"
        return ChatResponse(text, prompt_tokens=len(prompt) // 4, completion_tokens=8)

    def count_tokens(self, text: str) -> int:
        return len(text) // 4


@pytest.fixture
def fake(monkeypatch):
    backends: list[FakeBackend] = []

    def make(backend, model, base_url="", **kw):
        backends.append(FakeBackend(model))
        return backends[-1]

    monkeypatch.setattr(factory, "make_backend", make)
    return backends


@pytest.fixture
def store(tmp_path):
    db = random_feature_store(tmp_path / "features.db", n_features=12, seed=1)
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"fake-model": {"input": 1000.0, "output": 1000.0}}))
    return db


def options(db, **kw):
    base = {"db": str(db), "backend": "openai", "model": "fake-model", "progress": False}
    return {**base, **kw}


def test_explain_writes_rows_and_a_rerun_pays_nothing(fake, store):
    first = run(ExplainConfig(**options(store, features="0:6")))
    assert first["done"] == 6 and first["calls_sent"] == 6
    conn = sqlite3.connect(store)
    rows = conn.execute("SELECT feature, status, explanation, cache_keys FROM explanations")
    rows = rows.fetchall()
    assert sorted(r[0] for r in rows) == list(range(6))
    assert all(r[1] == "ok" and json.loads(r[3]) for r in rows)
    explained = conn.execute("SELECT COUNT(*) FROM features WHERE explanation IS NOT NULL")
    assert explained.fetchone()[0] == 6
    again = run(ExplainConfig(**options(store, features="0:6")))
    assert again["done"] == 0 and again["already_done"] == 6 and again["calls_sent"] == 0
    redo = run(ExplainConfig(**options(store, features="0:6", overwrite=True)))
    assert redo["calls_sent"] == 0 and redo["calls_cached"] == 6  # the cache answers


def test_plan_spends_nothing(fake, store, tmp_path):
    out = run(
        ExplainConfig(
            **options(store, features="0:4", plan=True, prices=str(tmp_path / "prices.json"))
        )
    )
    assert out["plan"]["calls"] == 4 and out["plan"]["estimated_usd"] > 0
    assert fake[-1].sent == []
    conn = sqlite3.connect(store)
    assert conn.execute("SELECT COUNT(*) FROM explanations").fetchone()[0] == 0


def test_budget_stops_cleanly_and_a_rerun_goes_on(fake, store, tmp_path):
    prices = str(tmp_path / "prices.json")
    plan = run(ExplainConfig(**options(store, features="0:8", plan=True, prices=prices)))
    per_call = plan["plan"]["estimated_usd"] / 8
    cut = run(
        ExplainConfig(
            **options(store, features="0:8", prices=prices, budget_usd=per_call * 3.5),
            max_concurrency=1,
        )
    )
    # Each call reserves its worst case (max_tokens) and is charged what it used: 3 to 7 fit.
    assert cut["stopped_by_budget"] and 3 <= cut["done"] < 8
    assert cut["spent_usd"] <= per_call * 3.5
    rest = run(ExplainConfig(**options(store, features="0:8", prices=prices)))
    assert rest["done"] == 8 - cut["done"] and rest["calls_sent"] == 8 - cut["done"]


def test_features_without_examples_are_skipped_and_listed(fake, store):
    conn = sqlite3.connect(store)
    with conn:
        conn.execute("DELETE FROM examples WHERE feature = 2")
    out = run(ExplainConfig(**options(store, features="0:4")))
    assert out["skipped_no_examples"] == [2] and out["done"] == 3


def test_an_unfinished_store_is_refused(fake, store):
    conn = sqlite3.connect(store)
    with conn:
        write_meta(conn, complete=False)
    with pytest.raises(FeatureStoreError, match="has not finished"):
        run(ExplainConfig(**options(store)))
    assert fake == []  # refused before a backend was made


def test_score_writes_scores_and_skips_what_it_has(fake, store):
    run(ExplainConfig(**options(store, features="0:3")))
    cfg = ScoreConfig(**options(store, features="0:5", hard_negatives=0))
    out = run(cfg)
    assert out["done"] == 3 and out["skipped_no_explanation"] == [3, 4]
    conn = sqlite3.connect(store)
    rows = conn.execute("SELECT feature, scorer, judge, status, details FROM scores").fetchall()
    assert {(r[0], r[1]) for r in rows} == {
        (f, s) for f in range(3) for s in ("detection", "fuzzing")
    }
    assert all(r[2] == "openai:fake-model" and json.loads(r[4]) for r in rows)
    again = run(cfg)
    assert again["done"] == 0 and again["already_done"] == 3 and again["calls_sent"] == 0


def test_score_plan_and_bad_scorer(fake, store):
    run(ExplainConfig(**options(store, features="0:2")))
    sent = len(fake[-1].sent)
    out = run(ScoreConfig(**options(store, features="0:2", plan=True, hard_negatives=0)))
    assert out["plan"]["calls"] > 0 and len(fake[-1].sent) == 0 and sent == 2
    with pytest.raises(ValueError, match="--scorers"):
        ScoreConfig(**options(store, scorers="detection,telepathy"))


CHILD = """
import sys, time
from monoscope.interpret.backends import factory
from monoscope.interpret.backends.base import Capabilities, ChatResponse
from monoscope.interpret import ExplainConfig, run

class Slow:
    name, capabilities = "fake", Capabilities()
    def __init__(self, model):
        self.model = model
    def chat(self, request, timeout):
        time.sleep(0.3)
        return ChatResponse("the tokens w1 and w2", 10, 5)
    def count_tokens(self, text):
        return len(text) // 4

factory.make_backend = lambda backend, model, base_url="", **kw: Slow(model)
run(ExplainConfig(db=sys.argv[1], backend="openai", model="fake-model",
                          features="0:8", progress=False, max_concurrency=1))
"""


def test_kill_9_mid_run_then_a_rerun_pays_only_for_the_rest(fake, store, tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    child = subprocess.Popen([sys.executable, str(script), str(store)])
    conn = sqlite3.connect(store, timeout=30)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and child.poll() is None:
        if conn.execute("SELECT COUNT(*) FROM explanations").fetchone()[0] >= 3:
            break
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    before = conn.execute("SELECT COUNT(*) FROM explanations").fetchone()[0]
    assert 3 <= before < 8
    rerun = run(ExplainConfig(**options(store, features="0:8")))
    assert rerun["already_done"] == before and rerun["done"] == 8 - before
    # a call answered before the kill but not yet written is answered from the cache
    assert rerun["calls_sent"] + rerun["calls_cached"] == 8 - before
    rows = conn.execute("SELECT feature FROM explanations ORDER BY feature").fetchall()
    assert [r[0] for r in rows] == list(range(8))


def test_another_prompt_version_explains_again(fake, store, monkeypatch):
    from monoscope.interpret import explainer, prompts

    run(ExplainConfig(**options(store, features="0:2")))
    real = prompts.load_prompt
    monkeypatch.setattr(
        explainer, "load_prompt", lambda v: real("explain-v1" if v == "explain-v9" else v)
    )
    again = run(ExplainConfig(**options(store, features="0:2"), prompt_version="explain-v9"))
    assert again["done"] == 2 and again["already_done"] == 0
    versions = sqlite3.connect(store).execute("SELECT DISTINCT prompt_version FROM explanations")
    assert {v for (v,) in versions} == {"explain-v1", "explain-v9"}
