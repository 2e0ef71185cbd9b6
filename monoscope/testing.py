"""Tiny random models and tokenizers for tests and for users' own experiments.

Everything here is built locally in well under a second: no hub, no download.
"""

from __future__ import annotations

from pathlib import Path

import torch

TINY_FAMILIES = ("llama", "mistral", "qwen2", "gpt2", "gpt_neox")


def tiny_tokenizer(bos: bool = True, eos: bool = True):
    """Byte-level tokenizer with no merges: one token per UTF-8 byte (ids 0..255), so any text
    encodes and token counts are predictable; <bos> is 256 and <eos> 257 when asked for."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<bos>", "<eos>"])
    specials = {"bos_token": "<bos>"} if bos else {}
    if eos:
        specials["eos_token"] = "<eos>"
    return PreTrainedTokenizerFast(tokenizer_object=tok, **specials)


def tiny_config(family: str, vocab_size: int, n_layers: int = 3, d_model: int = 32):
    """A transformers config of `family` with a few layers of width d_model."""
    from transformers import (
        GPT2Config,
        GPTNeoXConfig,
        LlamaConfig,
        MistralConfig,
        Qwen2Config,
    )

    common = {"vocab_size": vocab_size, "bos_token_id": 256, "eos_token_id": 257}
    llama_like = dict(
        hidden_size=d_model,
        intermediate_size=2 * d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        **common,
    )
    if family == "llama":
        return LlamaConfig(**llama_like)
    if family == "mistral":
        return MistralConfig(**llama_like)
    if family == "qwen2":
        return Qwen2Config(**llama_like)
    if family == "gpt2":
        return GPT2Config(n_embd=d_model, n_layer=n_layers, n_head=4, n_positions=256, **common)
    if family == "gpt_neox":
        return GPTNeoXConfig(
            hidden_size=d_model,
            intermediate_size=2 * d_model,
            num_hidden_layers=n_layers,
            num_attention_heads=4,
            max_position_embeddings=256,
            **common,
        )
    raise ValueError(f"unknown tiny family {family!r}; choose from {TINY_FAMILIES}")


def save_tiny_model(folder: str | Path, family: str = "llama", seed: int = 0, **config) -> Path:
    """Build a random tiny causal LM with its tokenizer and save it where `load_model` reads it."""
    from transformers import AutoModelForCausalLM

    folder = Path(folder)
    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, len(tokenizer), **config))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
