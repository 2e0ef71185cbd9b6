"""Corpora to packed token contexts: the input side of harvesting."""

from .builtin import builtin_corpus_documents
from .corpus import iter_documents
from .errors import CorpusError
from .packing import Context, count_tokens, iter_contexts
from .spec import CorpusSpec

__all__ = [
    "Context",
    "CorpusError",
    "CorpusSpec",
    "builtin_corpus_documents",
    "count_tokens",
    "iter_contexts",
    "iter_documents",
]
