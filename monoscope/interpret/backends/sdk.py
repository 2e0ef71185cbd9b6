"""What the two HTTP backends (openai, anthropic) share: importing their optional SDK with a
clear error, reading the key from its environment variable, and turning the SDK's exceptions
into the protocol's BackendError / RetryableError."""

from __future__ import annotations

import email.utils
import importlib
import os
import time
from types import ModuleType
from typing import Any

from monoscope.interpret.backends.base import BackendError, RetryableError

INSTALL_HINT = "pip install 'monoscope[llm]'"

RETRYABLE_STATUS = (408, 409, 429)
"""Besides 5xx: request timeout, conflict (a lock on the server side) and rate limiting."""


def import_sdk(name: str) -> ModuleType:
    """The `openai` or `anthropic` package; ImportError naming the extra when it is missing."""
    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise ImportError(
            f"the {name} backend needs the official `{name}` SDK, which is not installed: "
            f"{INSTALL_HINT}"
        ) from err


def key_from_env(variable: str, backend: str, required: bool) -> str | None:
    """The API key in `variable`; a missing required key fails now, before any work is done."""
    key = os.environ.get(variable, "").strip()
    if not key and required:
        raise BackendError(
            f"the {backend} backend needs an API key: set the environment variable {variable} "
            "(keys are read from the environment only, never from files or flags)"
        )
    return key or None


def retry_after_s(headers: Any) -> float | None:
    """The server's retry hint in seconds: `retry-after-ms`, or `retry-after` as seconds or an
    HTTP date; None when absent or unreadable."""
    if headers is None:
        return None
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def status_error(
    backend: str, model: str, where: str, status: int, detail: str, headers: Any, key_var: str
) -> BackendError | RetryableError:
    """The protocol's error for an HTTP error status, its message naming what to fix."""
    head = f"{backend} backend, model {model!r} at {where}: HTTP {status}"
    if status >= 500 or status in RETRYABLE_STATUS:
        return RetryableError(f"{head}: {detail}", status, retry_after_s(headers))
    if status in (401, 403):
        fix = f"the key was refused; check {key_var} (and that it may use this model)"
    elif status == 404:
        fix = f"the server does not know model {model!r} (or the URL is wrong); check --model"
        fix += " and --base-url" if backend == "openai" else ""
    else:
        fix = "the server refused the request as malformed"
    return BackendError(f"{head}: {fix}. Server said: {detail}")


def translate(sdk: ModuleType, err: Exception, backend: str, model: str, where: str, key_var: str):
    """The protocol's error for an exception raised by the `sdk` (openai or anthropic); other
    exceptions are returned unchanged."""
    if isinstance(err, sdk.APIStatusError):
        headers = getattr(err.response, "headers", None)
        detail = str(getattr(err, "message", "") or err)
        return status_error(backend, model, where, err.status_code, detail, headers, key_var)
    if isinstance(err, sdk.APITimeoutError):
        return RetryableError(f"{backend} backend, model {model!r} at {where}: timed out")
    if isinstance(err, sdk.APIConnectionError):
        return RetryableError(
            f"{backend} backend, model {model!r}: cannot reach {where} ({err.__cause__ or err}); "
            "is the server running and the URL right?"
        )
    return err
