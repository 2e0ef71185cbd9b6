"""Search by meaning: the features whose explanations are nearest a query, or another feature's
explanation, by the cosine of their sentence embeddings (monoscope.interpret.embedding).

The embedding model is loaded on first use and every explanation is embedded once, then kept in
memory: 16k explanations are 25 MB of float32, and embedding them is the slow part (docs/LOG.md),
paid once per server (or per export).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import torch

from monoscope.interpret.embedding import EmbedderMissingError, SentenceEmbedder
from monoscope.serve.catalog import Catalog, round_sig

MAX_QUERY_CHARS = 300
"""Longest query accepted: an explanation is one short phrase."""
CHUNK = 1024
"""Explanations compared against all the others at once when every neighbour list is built."""


class Embedder(Protocol):
    name: str

    def embed(self, texts: list[str]) -> torch.Tensor: ...


class MeaningUnavailable(RuntimeError):
    """No sentence-embedding model is installed; the message says what to install."""


class MeaningQueryError(ValueError):
    """A query that cannot be searched: empty, or too long (`status` is the HTTP code)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class MeaningIndex:
    """The explanations of `catalog` embedded by `embedder()` (SentenceEmbedder by default)."""

    def __init__(self, catalog: Catalog, embedder: Callable[[], Embedder] | None = None) -> None:
        self.catalog = catalog
        self._make_embedder = embedder or SentenceEmbedder
        self._lock = threading.Lock()
        self._embedder: Embedder | None = None
        self.ids = np.array([i for i, e in enumerate(catalog.explanation) if e], dtype=np.int64)
        """[n_explained] ascending ids of the features with an explanation."""
        self._vectors: torch.Tensor | None = None  # [n_explained, d] unit rows

    def search(self, query: str, offset: int = 0, limit: int = 50) -> dict[str, Any]:
        """{total, offset, limit, model, items: [summary + similarity]}: the explained features,
        nearest `query` first (ties by id); MeaningQueryError, MeaningUnavailable."""
        query = query.strip()
        if not query:
            raise MeaningQueryError("the query is empty: describe what to look for", 422)
        if len(query) > MAX_QUERY_CHARS:
            raise MeaningQueryError(
                f"the query is {len(query)} characters long; the limit is {MAX_QUERY_CHARS}", 413
            )
        result = {"total": len(self.ids), "offset": offset, "limit": limit, "model": None}
        if not len(self.ids):
            return {**result, "items": []}
        vectors, embedder = self._load()
        with self._lock:
            q = embedder.embed([query])[0]  # [d]
        sims = (vectors @ q).numpy()  # [n_explained]
        order = np.lexsort((self.ids, -sims))[offset : offset + limit]
        items = [
            {**self.catalog.summary(int(self.ids[j])), "similarity": round_sig(float(sims[j]), 4)}
            for j in order
        ]
        return {**result, "model": embedder.name, "items": items}

    def similar(self, fid: int, k: int) -> list[dict[str, Any]]:
        """The k features whose explanations are nearest feature `fid`'s ([] if it has none)."""
        pos = np.searchsorted(self.ids, fid)
        if pos == len(self.ids) or self.ids[pos] != fid:
            return []
        return self._nearest(np.array([pos]), k)[fid]

    def similar_table(self, k: int) -> dict[int, list[dict[str, Any]]]:
        """similar(fid, k) of every explained feature, a chunk of rows at a time."""
        out: dict[int, list[dict[str, Any]]] = {}
        for start in range(0, len(self.ids), CHUNK):
            out.update(self._nearest(np.arange(start, min(start + CHUNK, len(self.ids))), k))
        return out

    def _nearest(self, rows: np.ndarray, k: int) -> dict[int, list[dict[str, Any]]]:
        """{id: [similar]} of the explained features at positions `rows` of self.ids."""
        vectors, _ = self._load()
        k = min(k, len(self.ids) - 1)
        if k <= 0:
            return {int(self.ids[r]): [] for r in rows}
        sims = vectors[torch.from_numpy(rows)] @ vectors.T  # [len(rows), n_explained]
        sims[torch.arange(len(rows)), torch.from_numpy(rows)] = -torch.inf  # not itself
        values, found = sims.topk(k, dim=1)
        out = {}
        for r, row_values, row_found in zip(rows, values.tolist(), found.tolist(), strict=True):
            out[int(self.ids[r])] = [
                self._brief(int(self.ids[j]), v) for j, v in zip(row_found, row_values, strict=True)
            ]
        return out

    def _brief(self, fid: int, similarity: float) -> dict[str, Any]:
        return {
            "id": fid,
            "similarity": round_sig(similarity, 4),
            "explanation": self.catalog.explanation[fid],
            "score": self.catalog.score[fid],
        }

    def _load(self) -> tuple[torch.Tensor, Embedder]:
        """The explanations' embeddings [n_explained, d], computed on the first call, and the
        embedder that made them."""
        with self._lock:
            if self._vectors is None:
                try:
                    self._embedder = self._make_embedder()
                except EmbedderMissingError as err:
                    raise MeaningUnavailable(f"search by meaning: {err}") from err
                texts = [self.catalog.explanation[i] for i in self.ids]
                self._vectors = self._embedder.embed(texts).float()
            assert self._embedder is not None  # made with the vectors
            return self._vectors, self._embedder
