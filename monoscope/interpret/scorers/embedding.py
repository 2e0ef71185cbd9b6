"""Embedding (Delphi's retrieval form): the explanation and each held-out window's text are
embedded by an offline sentence embedder; a window's answer is its cosine similarity to the
explanation, and the score is the AUROC of activating against non-activating windows (chance
0.5). No LLM call."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from torch import Tensor

from monoscope.interpret.examples import Example, FeatureExamples, Split
from monoscope.interpret.metrics import auroc
from monoscope.interpret.scorers.base import ScoreResult, feature_rng, group, identity, pick


class Embedder(Protocol):
    """monoscope.interpret.embedding.SentenceEmbedder, or anything that embeds the same way."""

    name: str

    def embed(self, texts: list[str]) -> Tensor:
        """[len(texts), d] embeddings."""
        ...


@dataclass
class EmbeddingScorer:
    max_activating: int | None = None
    """Held-out activating windows used at most (None: all), spread over the intervals."""
    max_non_activating: int | None = None
    version: str = "embedding-v1"
    name: str = "embedding"
    chance: float = 0.5

    def score(
        self,
        fx: FeatureExamples,
        split: Split,
        explanation: str,
        judge: Embedder,
        rng_seed: int = 0,
        hard_negatives: Sequence[Example] = (),
    ) -> ScoreResult:
        rng = feature_rng(fx, rng_seed)
        positives = pick(split.activating, self.max_activating, rng)
        negatives = pick([*split.non_activating, *hard_negatives], self.max_non_activating, rng)
        windows = positives + negatives
        truth = [True] * len(positives) + [False] * len(negatives)
        vectors = judge.embed([explanation] + [e.text for e in windows]).float()  # [1 + n, d]
        vectors = vectors / vectors.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        similarity = (vectors[1:] @ vectors[0]).tolist()  # [n]
        score = auroc(truth, similarity)
        metrics = {
            "auc": score,
            "per_quantile": _mean_similarity(windows, similarity),
            "n": len(windows),
            "n_positive": len(positives),
            "n_negative": len(negatives),
        }
        details = [
            identity(e) | {"truth": int(t), "answer": round(s, 4)}
            for e, t, s in zip(windows, truth, similarity, strict=True)
        ]
        status = "ok" if score is not None else "undefined"
        return ScoreResult(self.name, self.version, status, score, 0.5, metrics, details, [])


def _mean_similarity(windows: list[Example], similarity: list[float]) -> dict[str, float]:
    """Mean cosine similarity per group (top, each quantile, random, ...): how retrieval fades
    with the activation."""
    sums: dict[str, list[float]] = {}
    for e, s in zip(windows, similarity, strict=True):
        sums.setdefault(group(e), []).append(s)
    return {g: sum(v) / len(v) for g, v in sums.items()}
