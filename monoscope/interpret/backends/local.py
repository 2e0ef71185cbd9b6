"""The `local` backend: a transformers causal LM in this process (the built-in SmolLM2-135M-
Instruct by default, or any local folder or hub id), prompted through its tokenizer's chat
template. Greedy at temperature 0, seeded sampling otherwise; top logprobs from the model's
raw next-token logits (before temperature), as OpenAI reports them."""

from __future__ import annotations

import threading
import time

import torch

from monoscope.interpret.backends.base import (
    BackendError,
    Capabilities,
    ChatRequest,
    ChatResponse,
    RetryableError,
)
from monoscope.models import LanguageModel, load_model

DEFAULT_MODEL = "smollm2-135m"


class LocalBackend:
    """Generation in-process, one at a time (a lock: the model is not re-entrant, and parallel
    generations on shared cores are no faster)."""

    name = "local"
    capabilities = Capabilities(json_output=False, logprobs=True)

    def __init__(
        self, model: str = "", lm: LanguageModel | None = None, device: str | None = None
    ) -> None:
        self.model = model or (lm.name if lm is not None else DEFAULT_MODEL)
        self.lm = lm if lm is not None else load_model(self.model, device=device)
        if not getattr(self.lm.tokenizer, "chat_template", None):
            raise BackendError(
                f"local backend: model {self.model!r} has no chat template in its tokenizer; "
                "use an instruction-tuned (chat) model, e.g. the built-in smollm2-135m"
            )
        self._lock = threading.Lock()
        self._eos = self._end_of_turn_ids()

    def count_tokens(self, text: str) -> int:
        return len(self.lm.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt_ids(self, request: ChatRequest) -> torch.Tensor:
        """[1, P] token ids of the chat-templated prompt, ready for the assistant's turn."""
        messages = [{"role": r, "content": c} for r, c in request.messages]
        text = self.lm.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        ids = self.lm.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        return ids

    def chat(self, request: ChatRequest, timeout: float) -> ChatResponse:
        """One generation; `timeout` bounds the generation itself, not the wait for the lock
        (calls queued behind others are not hung, and retrying them would only queue again)."""
        ids = self.prompt_ids(request)
        with self._lock:
            start = time.monotonic()
            new, logits = self._generate(ids, request, max_time=timeout)
            elapsed = time.monotonic() - start
        return self._response(ids, new, logits, request, elapsed, timeout)

    def _end_of_turn_ids(self) -> set[int]:
        """The ids that end an answer: the generation config's EOS ids and the tokenizer's."""
        eos = self.lm.model.generation_config.eos_token_id
        ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.lm.tokenizer.eos_token_id is not None:
            ids.add(self.lm.tokenizer.eos_token_id)
        return ids

    def _generate(self, ids: torch.Tensor, request: ChatRequest, max_time: float):
        """(new token ids [n], raw logits [n, vocab] or None) for one request."""
        tokenizer = self.lm.tokenizer
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self._eos)
        options: dict = {"do_sample": False}
        if request.temperature > 0:
            options = {
                "do_sample": True,
                "temperature": request.temperature,
                "top_k": 0,
                "top_p": 1.0,
            }
        ids = ids.to(self.lm.device)
        # A private RNG state, so a seeded request is reproducible and the caller's is untouched.
        devices = [self.lm.device] if self.lm.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            torch.manual_seed(request.seed)
            # Causal LMs mix GenerationMixin into PreTrainedModel, which has no `generate`.
            out = self.lm.model.generate(  # type: ignore[operator]
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=request.max_tokens,
                eos_token_id=sorted(self._eos) or None,
                pad_token_id=pad,
                max_time=max_time,
                return_dict_in_generate=True,
                output_logits=request.top_logprobs > 0,
                **options,
            )
        new = out.sequences[0, ids.shape[1] :].cpu()
        logits = torch.stack(out.logits, 1)[0].float().cpu() if request.top_logprobs else None
        return new, logits

    def _response(self, ids, new, logits, request, elapsed, timeout) -> ChatResponse:
        eos = self._eos
        tokens = new.tolist()
        stop = next((i for i, t in enumerate(tokens) if t in eos), None)
        if stop is not None:
            tokens = tokens[: stop + 1]
        elif len(tokens) < request.max_tokens and elapsed >= timeout:
            raise RetryableError(f"local backend: generation passed the {timeout:.0f} s timeout")
        top = None
        if logits is not None:
            logprobs, alts = logits[: len(tokens)].log_softmax(-1).topk(request.top_logprobs, -1)
            top = [
                [(self.lm.decode([t]), float(p)) for t, p in zip(a, lp, strict=True)]
                for a, lp in zip(alts.tolist(), logprobs.tolist(), strict=True)
            ]
        return ChatResponse(
            text=self.lm.decode(tokens, skip_special_tokens=True),
            prompt_tokens=ids.shape[1],
            completion_tokens=len(tokens),
            logprobs=top,
            finish_reason="stop" if stop is not None else "length",
        )
