"""What fires on my text: run the model and the store's SAE on a text, per-token top features.

The model and SAE are the store's `ServedModel` (model.py), loaded on the first request and
shared with steering and attribution; its lock serialises every use.
"""

from __future__ import annotations

from typing import Any

import torch

from monoscope.serve.catalog import Catalog, round_sig
from monoscope.serve.model import ModelUnavailable, ServedModel

MAX_TOKENS = 512
"""Longest text (in tokens) one request may run."""
TOP_PER_TOKEN = 8
"""Features listed per token."""


class FiresInputError(ValueError):
    """Text that cannot be run: empty, or longer than the limit (`status` is the HTTP code)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class FiresEngine:
    """Per-token top features of a text, from the store's model and SAE."""

    def __init__(
        self,
        served: ServedModel,
        catalog: Catalog,
        vocab: list[str],
        max_tokens: int = MAX_TOKENS,
    ) -> None:
        self.served = served
        self.catalog, self.vocab, self.max_tokens = catalog, vocab, max_tokens

    def run(self, text: str) -> dict[str, Any]:
        """{"tokens": [{"text", "features": [[id, act], ...]}], "features": {id: summary},
        "n_tokens", "max_tokens"}; FiresInputError for empty or too long text."""
        if not text.strip():
            raise FiresInputError("the text is empty: paste some text to run", 422)
        with self.served.lock:
            lm, sae = self.served.load()
            ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(ids) > self.max_tokens:
                raise FiresInputError(
                    f"the text is {len(ids)} tokens long; the limit is {self.max_tokens}", 413
                )
            acts = self._encode(lm, sae, ids)  # [pos, n_features]
        values, features = acts.topk(min(TOP_PER_TOKEN, acts.shape[-1]), dim=-1)
        tokens: list[dict[str, Any]] = []
        seen: set[int] = set()
        for tid, vals, feats in zip(ids, values.tolist(), features.tolist(), strict=True):
            fired = [[f, round_sig(v, 4)] for f, v in zip(feats, vals, strict=True) if v > 0]
            seen.update(f for f, _ in fired)
            shown = self.vocab[tid] if tid < len(self.vocab) else lm.decode([tid])
            tokens.append({"text": shown, "features": fired})
        known = [f for f in sorted(seen) if f < self.catalog.n_features]
        return {
            "tokens": tokens,
            "features": {str(f): self.catalog.summary(f) for f in known},
            "n_tokens": len(ids),
            "max_tokens": self.max_tokens,
        }

    def _encode(self, lm, sae, ids: list[int]) -> torch.Tensor:
        """SAE activations [pos, n_features] of the text's tokens, read after a BOS as the
        activation store's contexts start (its BOS row itself is dropped, as harvest does)."""
        tok = lm.tokenizer
        bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        prefix = [] if bos is None else [bos]
        input_ids = torch.tensor([prefix + ids])
        with torch.no_grad():
            site = self.served.site
            x = lm.capture(input_ids, [site])[site][0, len(prefix) :]  # [pos, d]
            if x.shape[-1] != sae.cfg.d_in:
                raise ModelUnavailable(
                    f"{site} of {self.served.model_name} has width {x.shape[-1]}, the SAE reads "
                    f"{sae.cfg.d_in}: pass the model the store was built from (--model)"
                )
            return sae.encode(x.to(sae.W_enc.device)).float().cpu()
