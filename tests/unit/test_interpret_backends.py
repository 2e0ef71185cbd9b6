"""The LLM backends: local generation checked against a teacher-forced forward pass, and the
openai and anthropic backends over real HTTP, through their official SDKs, against
`llm_server` answering with a tiny random llama (real generation, nothing canned)."""

from __future__ import annotations

import socket
import sys
import time

import pytest
import torch

from monoscope.interpret.backends.anthropic_backend import AnthropicBackend
from monoscope.interpret.backends.base import (
    BackendError,
    Capabilities,
    ChatRequest,
    RetryableError,
)
from monoscope.interpret.backends.factory import make_backend
from monoscope.interpret.backends.local import LocalBackend
from monoscope.interpret.backends.openai_backend import OpenAIBackend
from monoscope.interpret.backends.sdk import import_sdk, retry_after_s, status_error
from monoscope.interpret.cache import CallCache
from monoscope.interpret.calls import CallLimits, LLMClient, RetriesExhausted
from monoscope.interpret.llm_server import openai_request, running_llm_server
from monoscope.models import load_model
from monoscope.testing import TINY_CHAT_TEMPLATE

pytest.importorskip("openai")
pytest.importorskip("anthropic")
pytest.importorskip("fastapi")

KEY = "sk-test-7f3a9c-do-not-store"
REQUEST = ChatRequest(
    messages=(("system", "Answer briefly."), ("user", "Which token fires?")),
    max_tokens=12,
    top_logprobs=3,
)


@pytest.fixture(scope="module")
def chat_lm(tiny_model_dirs):
    """The tiny llama with a chat template (its own copy: the session fixture stays as is)."""
    lm = load_model(str(tiny_model_dirs["llama"]), device="cpu")
    lm.tokenizer.chat_template = TINY_CHAT_TEMPLATE
    return lm


@pytest.fixture(scope="module")
def local(chat_lm) -> LocalBackend:
    return LocalBackend("tiny-llama", lm=chat_lm)


@pytest.fixture(scope="module")
def server(local):
    with running_llm_server(local, api_key=KEY) as url:
        yield url


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_local_greedy_logprobs_match_a_teacher_forced_pass(local, chat_lm):
    out = local.chat(REQUEST, timeout=30)
    assert out == local.chat(REQUEST, timeout=30)  # greedy: deterministic
    assert out.completion_tokens == len(out.logprobs) == 12 and out.finish_reason == "length"
    prompt = local.prompt_ids(REQUEST)
    assert out.prompt_tokens == prompt.shape[1]
    new, _ = local._generate(prompt, REQUEST, max_time=30)
    assert local.lm.tokenizer.decode(new) == out.text
    for alts in out.logprobs:
        assert [p for _, p in alts] == sorted((p for _, p in alts), reverse=True)
    # Greedy: each generated token is the top alternative of a teacher-forced pass.
    ids = torch.cat([prompt, new[None]], 1)
    ref = chat_lm.logits(ids)[0, prompt.shape[1] - 1 : -1].log_softmax(-1).topk(3, -1)
    assert ref.indices[:, 0].tolist() == new.tolist()
    got = torch.tensor([[p for _, p in alts] for alts in out.logprobs])
    torch.testing.assert_close(got, ref.values, atol=1e-4, rtol=0)


def test_local_sampling_is_seeded(local):
    sampled = ChatRequest(messages=(("user", "hello"),), max_tokens=16, temperature=1.0, seed=5)
    first = local.chat(sampled, 30).text
    assert local.chat(sampled, 30).text == first
    other = ChatRequest(messages=(("user", "hello"),), max_tokens=16, temperature=1.0, seed=6)
    assert local.chat(other, 30).text != first
    assert local.chat(sampled, 30).logprobs is None


def test_local_generation_past_the_timeout_is_retryable(local):
    long = ChatRequest(messages=(("user", "hello"),), max_tokens=200)
    with pytest.raises(RetryableError, match="timeout"):
        local.chat(long, timeout=1e-3)


def test_local_needs_a_chat_template(tiny_llama):
    with pytest.raises(BackendError, match="no chat template"):
        LocalBackend("plain", lm=tiny_llama)


def test_openai_backend_over_http_answers_as_the_model_does(server, local, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    remote = OpenAIBackend("tiny-llama", base_url=f"{server}/v1")
    assert remote.capabilities == Capabilities(json_output=True, logprobs=True)
    got, want = remote.chat(REQUEST, timeout=30), local.chat(REQUEST, timeout=30)
    assert got.text == want.text and got.finish_reason == "length"
    assert (got.prompt_tokens, got.completion_tokens) == (want.prompt_tokens, 12)
    assert [[t for t, _ in a] for a in got.logprobs] == [[t for t, _ in a] for a in want.logprobs]
    flat = [p for a in got.logprobs for _, p in a]
    assert flat == pytest.approx([p for a in want.logprobs for _, p in a], abs=1e-6)


def test_server_maps_openai_parameters(local):
    payload = {
        "model": "tiny-llama",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "max_completion_tokens": 7,
        "temperature": 0.5,
        "seed": 3,
        "response_format": {"type": "json_object"},
        "logprobs": True,
        "top_logprobs": 2,
    }
    request = openai_request(payload, local)
    assert request == ChatRequest((("user", "hi"),), 7, 0.5, True, 2, 3)


def test_wrong_key_is_a_backend_error_naming_the_variable(server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong")
    with pytest.raises(BackendError, match=r"HTTP 401.*OPENAI_API_KEY"):
        OpenAIBackend("tiny-llama", base_url=f"{server}/v1").chat(REQUEST, 30)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-wrong")
    with pytest.raises(BackendError, match=r"HTTP 401.*ANTHROPIC_API_KEY"):
        AnthropicBackend("tiny-llama", base_url=server).chat(ChatRequest(REQUEST.messages), 30)


def test_unknown_model_is_a_backend_error(server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with pytest.raises(BackendError, match=r"HTTP 404.*'gpt-nope'.*--model"):
        OpenAIBackend("gpt-nope", base_url=f"{server}/v1").chat(REQUEST, 30)


def test_unreachable_endpoint_is_retried_then_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    backend = OpenAIBackend("m", base_url=f"http://127.0.0.1:{closed_port()}/v1")
    with pytest.raises(RetryableError, match="cannot reach"):
        backend.chat(REQUEST, timeout=5)
    limits = CallLimits(max_retries=2, backoff_base_s=0.001, backoff_max_s=0.01)
    client = LLMClient(backend, CallCache(tmp_path / "c.sqlite"), limits)
    start = time.monotonic()
    with pytest.raises(RetriesExhausted, match=r"gave up after 3 attempts.*cannot reach"):
        client.call(REQUEST)
    assert time.monotonic() - start < 2.0 and client.stats.n_retries == 2
    assert client.stats.n_sent == 0


def test_missing_keys_fail_at_construction_naming_the_variable(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(BackendError, match="OPENAI_API_KEY"):
        make_backend("openai", "gpt-4o-mini")
    with pytest.raises(BackendError, match="ANTHROPIC_API_KEY"):
        make_backend("anthropic", "claude-haiku-4-5")


def test_a_local_server_needs_no_key(local, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with running_llm_server(local) as url:
        answer = make_backend("openai", "tiny-llama", f"{url}/v1").chat(REQUEST, 30)
    assert answer.text == local.chat(REQUEST, 30).text


def test_anthropic_backend_over_http(server, local, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    remote = AnthropicBackend("tiny-llama", base_url=server)
    plain = ChatRequest(REQUEST.messages, max_tokens=10)
    got = remote.chat(plain, 30)
    # The SDK sends no temperature: the server samples at Anthropic's default, 1.0 (seed 0).
    want = local.chat(ChatRequest(REQUEST.messages, max_tokens=10, temperature=1.0), 30)
    assert (got.text, got.prompt_tokens, got.completion_tokens) == (
        want.text,
        want.prompt_tokens,
        want.completion_tokens,
    )
    assert got.finish_reason == "max_tokens" and got.logprobs is None
    with pytest.raises(BackendError, match="no logprobs"):
        remote.chat(REQUEST, 30)


class _Unavailable:
    name, model, capabilities = "fake", "busy-model", Capabilities()

    def chat(self, request, timeout):
        raise RetryableError("overloaded", 503, retry_after=2.5)

    def count_tokens(self, text):
        return len(text)


def test_server_busy_gives_retry_after_through_the_sdk(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with running_llm_server(_Unavailable()) as url, pytest.raises(RetryableError) as caught:
        OpenAIBackend("busy-model", base_url=f"{url}/v1").chat(ChatRequest(REQUEST.messages), 10)
    assert caught.value.status == 503 and caught.value.retry_after == 2.5


def test_api_key_never_reaches_the_cache_file(server, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    path = tmp_path / "calls.sqlite"
    client = LLMClient(OpenAIBackend("tiny-llama", base_url=f"{server}/v1"), CallCache(path))
    assert not client.call(REQUEST).cached and client.call(REQUEST).cached
    files = list(tmp_path.iterdir())
    assert path in files
    for f in files:  # the database and its WAL
        assert KEY.encode() not in f.read_bytes()


def test_http_status_classification():
    headers = {"retry-after": "3"}
    err = status_error("openai", "m", "x", 429, "slow down", headers, "OPENAI_API_KEY")
    assert isinstance(err, RetryableError) and err.retry_after == 3.0 and err.status == 429
    assert isinstance(status_error("openai", "m", "x", 502, "", {}, "K"), RetryableError)
    assert isinstance(status_error("openai", "m", "x", 400, "bad", {}, "K"), BackendError)
    assert retry_after_s({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert retry_after_s({"retry-after": "Wed, 21 Oct 2099 07:28:00 GMT"}) > 0
    assert retry_after_s({"retry-after": "soon"}) is None and retry_after_s({}) is None


def test_missing_sdk_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "anthropic", None)
    with pytest.raises(ImportError, match=r"pip install 'monoscope\[llm\]'"):
        import_sdk("anthropic")


def test_factory_rejects_what_it_cannot_build(local):
    with pytest.raises(ValueError, match="unknown backend"):
        make_backend("gemini", "x")
    with pytest.raises(ValueError, match="--base-url"):
        make_backend("local", "", "http://127.0.0.1:1/v1")
    assert make_backend("local", "", lm=local.lm).model == local.lm.name


@pytest.mark.integration
def test_builtin_model_answers_through_the_local_backend():
    backend = make_backend("local", "smollm2-135m", device="cpu")
    question = ChatRequest((("user", "What is the capital of France? One word."),), max_tokens=12)
    answer = backend.chat(question, timeout=120)
    assert "Paris" in answer.text and answer.finish_reason == "stop"
