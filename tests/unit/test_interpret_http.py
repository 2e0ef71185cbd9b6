"""`explain` and `score` end to end over real HTTP: the openai backend (the official SDK)
against `monoscope llm-server`'s app serving a tiny random llama, so every answer is generated,
none canned. (tests/llamacpp runs the same against llama.cpp's server and the built-in model.)"""

from __future__ import annotations

import sqlite3

import pytest

from monoscope.interpret import ExplainConfig, run
from monoscope.interpret.backends.base import BackendError
from monoscope.interpret.backends.local import LocalBackend
from monoscope.interpret.llm_server import running_llm_server
from monoscope.models import load_model
from monoscope.testing import TINY_CHAT_TEMPLATE, random_feature_store


@pytest.fixture(scope="module")
def tiny_chat_backend(tiny_model_dirs) -> LocalBackend:
    lm = load_model(str(tiny_model_dirs["llama"]), device="cpu")
    lm.tokenizer.chat_template = TINY_CHAT_TEMPLATE
    return LocalBackend("tiny-llama", lm=lm)


def test_explain_and_score_through_the_openai_sdk(
    tmp_path, tiny_chat_backend, monkeypatch, explain_and_score_over_http
):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # a --base-url server needs none
    db = random_feature_store(tmp_path / "features.db", n_features=8, seed=3)
    with running_llm_server(tiny_chat_backend) as url:
        explain_and_score_over_http(db, f"{url}/v1", "tiny-llama", "0:3")


def test_a_refused_key_or_an_unknown_model_stops_before_any_feature(
    tmp_path, tiny_chat_backend, monkeypatch
):
    db = random_feature_store(tmp_path / "features.db", n_features=4, seed=3)
    monkeypatch.setenv("OPENAI_API_KEY", "wrong")
    common = {"db": str(db), "backend": "openai", "features": "0:3", "progress": False}
    with running_llm_server(tiny_chat_backend, api_key="right") as url:
        with pytest.raises(BackendError, match="OPENAI_API_KEY"):
            run(ExplainConfig(**common, model="tiny-llama", base_url=f"{url}/v1"))
        monkeypatch.setenv("OPENAI_API_KEY", "right")
        with pytest.raises(BackendError, match="no-such-model"):
            run(ExplainConfig(**common, model="no-such-model", base_url=f"{url}/v1"))
    assert sqlite3.connect(db).execute("SELECT COUNT(*) FROM explanations").fetchone() == (0,)
