"""`explain` and `score` end to end over real HTTP: the openai backend (the official SDK)
against `monoscope llm-server`'s app serving a tiny random llama, so every answer is generated,
none canned. (tests/llamacpp runs the same against llama.cpp's server and the built-in model.)"""

from __future__ import annotations

import pytest

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
