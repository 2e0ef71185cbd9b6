"""The optional llama.cpp tier: `explain` and `score` through the openai backend against
llama.cpp's OpenAI-compatible server (llama-cpp-python[server]) serving the built-in model's
GGUF. llama-cpp-python builds from source (about 26 minutes on 2 loaded cores, docs/LOG.md), so
CI does not install it; without it the tier is skipped, saying why."""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from monoscope.models.builtin import gguf_path
from monoscope.testing import random_feature_store

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        importlib.util.find_spec("llama_cpp") is None
        or importlib.util.find_spec("sse_starlette") is None,
        reason="llama.cpp's server is not installed: pip install 'llama-cpp-python[server]'",
    ),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server():
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(gguf_path("smollm2-135m")),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "4096",
            "--model_alias",
            "smollm2-135m",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/models", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("llama.cpp's server did not start") from None
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_explain_and_score_against_llama_cpp(
    tmp_path, llama_server, monkeypatch, explain_and_score_over_http
):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    words = [" the", " cat", " sat", " on", " a", " mat", " bridge", " river", ".", "\n"]
    db = random_feature_store(tmp_path / "features.db", n_features=6, vocab=words, seed=2)
    explain_and_score_over_http(db, llama_server, "smollm2-135m", "0:2")
