"""Prompts as the SAE saw its training text: BOS first, then the tokens; and prompt checks.

The activation store's contexts start with BOS (the tokenizer's BOS, else its EOS), so steering
and attribution prepend it too. Position 0 holding BOS is never edited: stores leave BOS rows out
(their norms are outliers), so the SAE never saw one (as in evaluate/splice.py).
"""

from __future__ import annotations

import torch
from torch import Tensor

from monoscope.models import LanguageModel
from monoscope.steer.spec import SteeringError


def bos_id(tokenizer) -> int | None:
    """The token contexts start with: BOS, else EOS (as the harvest packs them), else None."""
    bos = tokenizer.bos_token_id
    return bos if bos is not None else tokenizer.eos_token_id


def context_length(lm: LanguageModel) -> int | None:
    """The model's maximum sequence length, if its config states one."""
    config = lm.model.config
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def encode_prompt(lm: LanguageModel, text: str, chat: bool = False, extra: int = 0) -> Tensor:
    """Token ids [1, P]: BOS + the text's tokens (with `chat`, the tokenizer's chat template
    around it as a user turn, ending where the assistant's reply starts).

    SteeringError if P + `extra` (tokens to be generated) exceeds the model's context length.
    """
    if not isinstance(text, str) or not text:
        raise SteeringError("the prompt is empty")
    tokenizer = lm.tokenizer
    if chat:
        if not getattr(tokenizer, "chat_template", None):
            raise SteeringError(f"the tokenizer of {lm.name} has no chat template")
        templated = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
        assert isinstance(templated, str)  # tokenize=False: the text
        text = templated
    ids = tokenizer(text, add_special_tokens=False).input_ids
    bos = bos_id(tokenizer)
    if bos is not None and (not ids or ids[0] != bos):
        ids = [bos, *ids]
    limit = context_length(lm)
    if limit is not None and len(ids) + extra > limit:
        more = f" plus {extra} to generate" if extra else ""
        raise SteeringError(
            f"the prompt is {len(ids)} tokens{more}, over the context length of {lm.name} "
            f"({limit} tokens)"
        )
    return torch.tensor([ids])


def token_texts(lm: LanguageModel, ids: Tensor | list[int]) -> list[str]:
    """The decoded text of each token id, one string per token."""
    ids = ids.tolist() if isinstance(ids, Tensor) else ids
    return [lm.decode([i]) for i in ids]


def single_token(lm: LanguageModel, text: str) -> int:
    """The id of `text` if it is exactly one token; else SteeringError showing its tokens."""
    ids = lm.tokenizer(text, add_special_tokens=False).input_ids
    if len(ids) != 1:
        pieces = token_texts(lm, ids)
        hint = f"; e.g. {pieces[0]!r}" if pieces else ""
        raise SteeringError(
            f"target {text!r} is {len(ids)} tokens {pieces}, not one: give a single token{hint}"
        )
    return ids[0]
