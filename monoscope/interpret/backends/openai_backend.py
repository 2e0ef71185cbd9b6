"""The `openai` backend: the official SDK against OpenAI or any OpenAI-compatible server (vLLM,
Ollama, llama.cpp's server, `monoscope llm-server`) named by --base-url."""

from __future__ import annotations

import math
from typing import Any

from monoscope.interpret.backends.base import (
    BackendError,
    Capabilities,
    ChatRequest,
    ChatResponse,
)
from monoscope.interpret.backends.sdk import import_sdk, key_from_env, translate

KEY_VAR = "OPENAI_API_KEY"
PLACEHOLDER_KEY = "no-key"
"""Sent to a --base-url server when OPENAI_API_KEY is unset: local servers need no key, and
the SDK refuses to build a client without one."""


def estimate_tokens(text: str) -> int:
    """About 4 characters per token: OpenAI's rule of thumb for English, used where no
    tokenizer is at hand (it sizes budgets and rate limits, never the bill)."""
    return math.ceil(len(text) / 4)


def _tokenizer(model: str):
    """tiktoken's encoder for `model` when tiktoken is installed, else None (estimate)."""
    try:
        import tiktoken
    except ImportError:
        return None
    try:
        return tiktoken.encoding_for_model(model)
    except KeyError:
        return tiktoken.get_encoding("o200k_base")


class OpenAIBackend:
    """Chat completions through `openai.OpenAI`; one attempt per call (the SDK's own retries
    are off: calls.py retries, with the budget and rate limits in view)."""

    name = "openai"
    capabilities = Capabilities(json_output=True, logprobs=True)

    def __init__(self, model: str, base_url: str = "", timeout: float = 120.0) -> None:
        if not model:
            raise BackendError("the openai backend needs a model name: pass --model")
        self.sdk = import_sdk("openai")
        key = key_from_env(KEY_VAR, "openai", required=not base_url)
        self.model = model
        self.where = base_url or "api.openai.com"
        self.client = self.sdk.OpenAI(
            base_url=base_url or None,
            api_key=key or PLACEHOLDER_KEY,
            max_retries=0,
            timeout=timeout,
        )
        # OpenAI's own API wants max_completion_tokens (reasoning models refuse max_tokens);
        # compatible servers have long understood max_tokens, not all the newer name.
        self._length_arg = "max_tokens" if base_url else "max_completion_tokens"
        self._encoder = _tokenizer(model)

    def count_tokens(self, text: str) -> int:
        if self._encoder is None:
            return estimate_tokens(text)
        return len(self._encoder.encode(text, disallowed_special=()))

    def _arguments(self, request: ChatRequest) -> dict[str, Any]:
        args: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": r, "content": c} for r, c in request.messages],
            "temperature": request.temperature,
            "seed": request.seed,
            self._length_arg: request.max_tokens,
        }
        if request.json_output:
            args["response_format"] = {"type": "json_object"}
        if request.top_logprobs:
            args.update(logprobs=True, top_logprobs=request.top_logprobs)
        return args

    def chat(self, request: ChatRequest, timeout: float) -> ChatResponse:
        try:
            completion = self.client.chat.completions.create(
                **self._arguments(request), timeout=timeout
            )
        except self.sdk.OpenAIError as err:
            raise translate(self.sdk, err, "openai", self.model, self.where, KEY_VAR) from err
        if not completion.choices:
            raise BackendError(f"openai backend, model {self.model!r}: an answer with no choices")
        choice = completion.choices[0]
        text = choice.message.content or ""
        usage = completion.usage
        return ChatResponse(
            text=text,
            # A server that reports no usage is billed by our own count of the text.
            prompt_tokens=usage.prompt_tokens if usage else self._prompt_estimate(request),
            completion_tokens=usage.completion_tokens if usage else self.count_tokens(text),
            logprobs=self._logprobs(choice, request),
            finish_reason=choice.finish_reason or "",
        )

    def _prompt_estimate(self, request: ChatRequest) -> int:
        return sum(self.count_tokens(content) for _, content in request.messages)

    def _logprobs(self, choice: Any, request: ChatRequest) -> list[list[tuple[str, float]]] | None:
        if not request.top_logprobs:
            return None
        content = getattr(choice.logprobs, "content", None)
        if content is None:
            raise BackendError(
                f"openai backend, model {self.model!r} at {self.where}: logprobs were asked for "
                "and the server returned none; use a server that supports logprobs, or a scorer "
                "that does not need them"
            )
        return [[(alt.token, float(alt.logprob)) for alt in item.top_logprobs] for item in content]
