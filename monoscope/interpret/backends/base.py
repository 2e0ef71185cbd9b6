"""The one small protocol every LLM backend speaks, and what a call sends and gets back.

A backend turns a `ChatRequest` into a `ChatResponse`. It declares what it can do in
`Capabilities`, so a scorer that wants token logprobs (simulation) asks the backend instead of
trying and failing. Retries, rate limits, the cache, costs and budgets live in `calls.py`, not
here: a backend makes exactly one attempt per `chat` call.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do beyond plain chat."""

    json_output: bool = False
    """It can be asked for a JSON object (OpenAI's response_format, or a constrained decoder)."""
    logprobs: bool = False
    """It returns the top alternatives' log-probabilities of each generated token."""


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion. Everything that changes the answer is here, so it is the cache key."""

    messages: tuple[tuple[str, str], ...]
    """(role, content) pairs: role is 'system', 'user' or 'assistant'."""
    max_tokens: int = 64
    temperature: float = 0.0
    json_output: bool = False
    top_logprobs: int = 0
    """Alternatives per generated token to return (0: none); needs Capabilities.logprobs."""
    seed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "messages": [list(m) for m in self.messages]}


@dataclass
class ChatResponse:
    """A backend's answer to one request."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    logprobs: list[list[tuple[str, float]]] | None = None
    """Per generated token, its top alternatives as (token text, log-probability), most likely
    first (the sampled token is not necessarily the first at temperature > 0); None when the
    request asked for none."""
    finish_reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChatResponse:
        logprobs = data.get("logprobs")
        if logprobs is not None:
            logprobs = [[(str(t), float(p)) for t, p in alts] for alts in logprobs]
        return cls(
            text=data["text"],
            prompt_tokens=int(data["prompt_tokens"]),
            completion_tokens=int(data["completion_tokens"]),
            logprobs=logprobs,
            finish_reason=data.get("finish_reason", ""),
        )


class BackendError(RuntimeError):
    """A call that will not succeed by trying again: bad key (401/403), unknown model (404),
    bad request (400). The message names the backend, the model and what to fix."""


@dataclass
class RetryableError(RuntimeError):
    """A call that may succeed later: rate limited (429), server error (5xx), timeout, an
    unreachable endpoint. `retry_after` is the server's hint in seconds, when it gave one."""

    message: str
    status: int | None = None
    retry_after: float | None = None

    def __str__(self) -> str:
        return self.message


@runtime_checkable
class Backend(Protocol):
    """An LLM the interpret stage can call: `openai`, `anthropic` or `local`."""

    name: str
    """The backend's kind: 'openai', 'anthropic', 'local'."""
    model: str
    """The model it calls, as the user named it (part of the cache key)."""
    capabilities: Capabilities

    def chat(self, request: ChatRequest, timeout: float) -> ChatResponse:
        """One attempt at one completion; raises BackendError or RetryableError."""
        ...

    def count_tokens(self, text: str) -> int:
        """Tokens `text` costs this model's prompt (an estimate where no tokenizer is at hand)."""
        ...


@dataclass
class CallResult:
    """A request's answer as the call layer (calls.py) hands it to explainers and scorers."""

    response: ChatResponse
    key: str
    """The call's content address in the call cache (stored with the explanation or score)."""
    cached: bool
    """Answered from the cache: nothing was sent, nothing was paid."""
    cost_usd: float
    latency_s: float


class Caller(Protocol):
    """What explainers and scorers call: `calls.LLMClient`, or a fake in tests."""

    backend: Backend

    def call(self, request: ChatRequest) -> CallResult:
        """Answer one request (from the cache when it holds it); thread-safe."""
        ...
