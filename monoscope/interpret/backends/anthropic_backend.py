"""The `anthropic` backend: Claude through the official SDK's Messages API.

No logprobs and no JSON mode: prompts that want JSON ask for it in the text. The request's
temperature is not sent: current SDKs (anthropic >= 2) take no temperature argument and
current models run at their own default, so answers at temperature 0 are not guaranteed
deterministic; the call cache is what makes a rerun reproduce them.
"""

from __future__ import annotations

from monoscope.interpret.backends.base import (
    BackendError,
    Capabilities,
    ChatRequest,
    ChatResponse,
)
from monoscope.interpret.backends.openai_backend import estimate_tokens
from monoscope.interpret.backends.sdk import import_sdk, key_from_env, translate

KEY_VAR = "ANTHROPIC_API_KEY"


def split_system(messages: tuple[tuple[str, str], ...]) -> tuple[str, list[dict[str, str]]]:
    """(system prompt, the other turns): the Messages API takes the system prompt apart."""
    system = "\n\n".join(content for role, content in messages if role == "system")
    turns = [{"role": role, "content": content} for role, content in messages if role != "system"]
    return system, turns


class AnthropicBackend:
    """`anthropic.Anthropic().messages.create`; one attempt per call (SDK retries off)."""

    name = "anthropic"
    capabilities = Capabilities(json_output=False, logprobs=False)

    def __init__(self, model: str, base_url: str = "", timeout: float = 120.0) -> None:
        if not model:
            raise BackendError("the anthropic backend needs a model name: pass --model")
        self.sdk = import_sdk("anthropic")
        key = key_from_env(KEY_VAR, "anthropic", required=True)
        self.model = model
        self.where = base_url or "api.anthropic.com"
        self.client = self.sdk.Anthropic(
            api_key=key, base_url=base_url or None, max_retries=0, timeout=timeout
        )

    def count_tokens(self, text: str) -> int:
        # Anthropic's tokenizer is not public; its token-counting endpoint is a network call.
        return estimate_tokens(text)

    def chat(self, request: ChatRequest, timeout: float) -> ChatResponse:
        if request.top_logprobs:
            raise BackendError("the anthropic backend returns no logprobs (capabilities say so)")
        system, turns = split_system(request.messages)
        extra = {"system": system} if system else {}
        try:
            message = self.client.messages.create(
                model=self.model,
                max_tokens=request.max_tokens,
                messages=turns,
                timeout=timeout,
                **extra,
            )
        except self.sdk.AnthropicError as err:
            raise translate(self.sdk, err, "anthropic", self.model, self.where, KEY_VAR) from err
        text = "".join(block.text for block in message.content if block.type == "text")
        return ChatResponse(
            text=text,
            prompt_tokens=message.usage.input_tokens,
            completion_tokens=message.usage.output_tokens,
            finish_reason=message.stop_reason or "",
        )
