"""`monoscope llm-server`: any Backend (by default the local SmolLM2) behind a small OpenAI-
compatible HTTP API, plus Anthropic's Messages API, so the `openai` and `anthropic` backends are
exercised over real HTTP through their official SDKs, and one local model can serve several runs.

POST /v1/chat/completions (messages, max_tokens / max_completion_tokens, temperature, seed,
response_format, logprobs + top_logprobs), GET /v1/models, POST /v1/messages. Errors come in
each API's own JSON shape: 401 for a wrong key, 404 for a model this server does not serve,
400 for a bad request, 503 (with Retry-After) when the backend may succeed later.

Limits: JSON mode is passed to the backend as asked (the local backend does not constrain its
output, so prompts should ask for JSON in the text too); in `logprobs.content`, each token is
the most likely alternative at its position, which is the generated token only at
temperature 0. No streaming, one choice (n=1).
"""

# No `from __future__ import annotations`: FastAPI reads the route annotations at run time.
import hmac
import os
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

from monoscope.interpret.backends.base import (
    Backend,
    BackendError,
    ChatRequest,
    ChatResponse,
    RetryableError,
)
from monoscope.interpret.config import LLMServerConfig

DEFAULT_MAX_TOKENS = 256
ERROR_TYPES = {
    # kind: (OpenAI's error type, its code; Anthropic's error type)
    "auth": ("invalid_request_error", "invalid_api_key", "authentication_error"),
    "not_found": ("invalid_request_error", "model_not_found", "not_found_error"),
    "invalid": ("invalid_request_error", None, "invalid_request_error"),
    "unavailable": ("server_error", None, "overloaded_error"),
}


class ApiError(Exception):
    """An error answer: HTTP status, its kind (a key of ERROR_TYPES), a message."""

    def __init__(self, status: int, kind: str, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.status, self.kind, self.message, self.retry_after = status, kind, message, retry_after


def _text(content: Any) -> str:
    """A message's text: a string, or a list of parts of which the text parts are kept."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    raise ApiError(400, "invalid", "message content must be a string or a list")


def _int(payload: dict, name: str, default: int, low: int = 0) -> int:
    value = payload.get(name)
    value = default if value is None else value
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ApiError(400, "invalid", f"{name} must be an integer >= {low}")
    return value


def _temperature(payload: dict) -> float:
    value = payload.get("temperature")
    value = 1.0 if value is None else value
    if not isinstance(value, int | float) or not 0 <= value <= 2:
        raise ApiError(400, "invalid", "temperature must be a number in [0, 2]")
    return float(value)


def openai_request(payload: dict, backend: Backend) -> ChatRequest:
    """The ChatRequest of an OpenAI chat-completions body (ApiError 400 when malformed)."""
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "invalid", "messages must be a non-empty list")
    turns = tuple((str(m.get("role", "")), _text(m.get("content", ""))) for m in messages)
    length = "max_completion_tokens" if "max_completion_tokens" in payload else "max_tokens"
    top = _int(payload, "top_logprobs", 1 if payload.get("logprobs") else 0)
    if top and not payload.get("logprobs"):
        raise ApiError(400, "invalid", "top_logprobs needs logprobs: true")
    if top and not backend.capabilities.logprobs:
        raise ApiError(400, "invalid", "this model returns no logprobs")
    response_format = payload.get("response_format") or {}
    return ChatRequest(
        messages=turns,
        max_tokens=_int(payload, length, DEFAULT_MAX_TOKENS, low=1),
        temperature=_temperature(payload),
        json_output=response_format.get("type") == "json_object",
        top_logprobs=top,
        seed=_int(payload, "seed", 0),
    )


def openai_response(response: ChatResponse, model: str) -> dict[str, Any]:
    """The OpenAI chat.completion JSON of a backend's answer."""
    logprobs = None
    if response.logprobs is not None:
        content = []
        for alts in response.logprobs:
            top = [{"token": t, "logprob": p, "bytes": list(t.encode())} for t, p in alts]
            content.append({**top[0], "top_logprobs": top})
        logprobs = {"content": content}
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": response.text},
        "finish_reason": response.finish_reason or "stop",
        "logprobs": logprobs,
    }
    usage = {
        "prompt_tokens": response.prompt_tokens,
        "completion_tokens": response.completion_tokens,
        "total_tokens": response.prompt_tokens + response.completion_tokens,
    }
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": usage,
    }


def anthropic_request(payload: dict) -> ChatRequest:
    """The ChatRequest of an Anthropic Messages body (ApiError 400 when malformed)."""
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "invalid", "messages must be a non-empty list")
    system = _text(payload.get("system") or "")
    turns = [("system", system)] if system else []
    turns += [(str(m.get("role", "")), _text(m.get("content", ""))) for m in messages]
    return ChatRequest(
        messages=tuple(turns),
        max_tokens=_int(payload, "max_tokens", DEFAULT_MAX_TOKENS, low=1),
        temperature=_temperature(payload),
    )


def anthropic_response(response: ChatResponse, model: str) -> dict[str, Any]:
    """The Anthropic Message JSON of a backend's answer."""
    stop = "max_tokens" if response.finish_reason == "length" else "end_turn"
    return {
        "id": f"msg_{uuid.uuid4().hex}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": response.text}],
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {
            "input_tokens": response.prompt_tokens,
            "output_tokens": response.completion_tokens,
        },
    }


def _error_body(api: str, err: ApiError) -> dict[str, Any]:
    openai_type, code, anthropic_type = ERROR_TYPES[err.kind]
    if api == "anthropic":
        return {"type": "error", "error": {"type": anthropic_type, "message": err.message}}
    return {"error": {"message": err.message, "type": openai_type, "param": None, "code": code}}


def _check(backend: Backend, api_key: str | None, sent_key: str, model: Any) -> None:
    """ApiError 401 for a missing or wrong key, 404 for a model this server does not serve."""
    if api_key is not None and not hmac.compare_digest(sent_key.encode(), api_key.encode()):
        raise ApiError(401, "auth", "Incorrect API key provided.")
    if model != backend.model:
        raise ApiError(
            404,
            "not_found",
            f"The model {model!r} does not exist; this server serves {backend.model!r}.",
        )


def _chat(backend: Backend, request: ChatRequest, timeout: float) -> ChatResponse:
    try:
        return backend.chat(request, timeout)
    except RetryableError as err:
        raise ApiError(503, "unavailable", str(err), err.retry_after) from err
    except BackendError as err:
        raise ApiError(400, "invalid", str(err)) from err


def create_llm_app(backend: Backend, api_key: str | None = None, timeout: float = 600.0):
    """The FastAPI app serving `backend`; clients must send `api_key` when one is given."""
    from fastapi import Body, FastAPI, Header
    from fastapi.responses import JSONResponse

    app = FastAPI(title="monoscope llm-server", docs_url=None, redoc_url=None)
    JsonBody = Annotated[dict[str, Any], Body()]

    def answer(api: str, work) -> JSONResponse:
        try:
            return JSONResponse(work())
        except ApiError as err:
            headers = {} if err.retry_after is None else {"retry-after": f"{err.retry_after:g}"}
            return JSONResponse(_error_body(api, err), err.status, headers=headers)

    @app.get("/v1/models")
    def models(authorization: Annotated[str, Header()] = "") -> JSONResponse:
        def work():
            _check(backend, api_key, authorization.removeprefix("Bearer "), backend.model)
            entry = {"id": backend.model, "object": "model", "created": 0, "owned_by": "monoscope"}
            return {"object": "list", "data": [entry]}

        return answer("openai", work)

    @app.post("/v1/chat/completions")
    def chat_completions(
        payload: JsonBody, authorization: Annotated[str, Header()] = ""
    ) -> JSONResponse:
        def work():
            _check(backend, api_key, authorization.removeprefix("Bearer "), payload.get("model"))
            response = _chat(backend, openai_request(payload, backend), timeout)
            return openai_response(response, backend.model)

        return answer("openai", work)

    @app.post("/v1/messages")
    def messages(
        payload: JsonBody,
        x_api_key: Annotated[str, Header()] = "",
        authorization: Annotated[str, Header()] = "",
    ) -> JSONResponse:
        def work():
            # Anthropic's API reads x-api-key; recent SDKs send the key as a bearer token.
            sent = x_api_key or authorization.removeprefix("Bearer ")
            _check(backend, api_key, sent, payload.get("model"))
            response = _chat(backend, anthropic_request(payload), timeout)
            return anthropic_response(response, backend.model)

        return answer("anthropic", work)

    return app


@contextmanager
def running_llm_server(backend: Backend, api_key: str | None = None) -> Iterator[str]:
    """Serve `backend` from a background thread on a free loopback port; yields the root URL
    (http://127.0.0.1:PORT: the openai backend's --base-url is ROOT/v1, anthropic's is ROOT)
    and stops the server on exit. For tests, benchmarks and notebooks."""
    from monoscope.web.server import background_server

    with background_server(create_llm_app(backend, api_key)) as url:
        yield url.rstrip("/")


def serve_llm(
    backend: Backend, host: str = "127.0.0.1", port: int = 8001, api_key: str | None = None
) -> None:
    """Serve `backend` until interrupted."""
    from monoscope.web.server import (
        LOOPBACK,
        base_url,
        listening_socket,
        require_server_extra,
        run_on,
    )

    require_server_extra()
    sock = listening_socket(host, port)  # before saying where: a taken port is one line
    if host not in LOOPBACK:
        print(
            f"warning: listening on {host}: anyone who can reach it can use the model",
            file=sys.stderr,
        )
    url = base_url(sock)
    print(
        f"serving {backend.name} model {backend.model!r} at {url}v1 "
        f"(OpenAI chat completions; Anthropic messages at {url})"
    )
    print("Ctrl+C stops the server")
    run_on(create_llm_app(backend, api_key), sock)


def run_llm_server(cfg: LLMServerConfig) -> None:
    """`monoscope llm-server`: load cfg.model with the local backend and serve it."""
    from monoscope.interpret.backends.local import LocalBackend

    api_key = None
    if cfg.api_key_env:
        api_key = os.environ.get(cfg.api_key_env, "")
        if not api_key:
            raise BackendError(
                f"--api-key-env {cfg.api_key_env}: that environment variable is not set"
            )
    serve_llm(LocalBackend(cfg.model), cfg.host, cfg.port, api_key)
