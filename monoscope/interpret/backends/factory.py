"""`make_backend`: the backend the command line names, built (and its key checked) before any
work starts."""

from __future__ import annotations

from typing import Any

from monoscope.interpret.backends.base import Backend

BACKEND_NAMES = ("local", "openai", "anthropic")


def make_backend(backend: str, model: str, base_url: str = "", **kw: Any) -> Backend:
    """A backend by name. kw: `timeout` (openai, anthropic); `lm`, `device` (local).

    Raises ImportError naming `pip install 'monoscope[llm]'` when an SDK is missing, and
    BackendError naming the environment variable when a required key is missing."""
    if backend == "local":
        from monoscope.interpret.backends.local import LocalBackend

        if base_url:
            raise ValueError("--base-url is for the openai and anthropic backends, not local")
        return LocalBackend(model, **kw)
    if backend == "openai":
        from monoscope.interpret.backends.openai_backend import OpenAIBackend

        return OpenAIBackend(model, base_url, **kw)
    if backend == "anthropic":
        from monoscope.interpret.backends.anthropic_backend import AnthropicBackend

        return AnthropicBackend(model, base_url, **kw)
    raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKEND_NAMES)}")
