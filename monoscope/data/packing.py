"""Tokenise documents and pack them into fixed-length contexts, streaming.

Layout of the token stream: doc0 EOS doc1 EOS doc2 ... (EOS only if the tokenizer has one), cut
into pieces of `context_len - 1` tokens, each prefixed with BOS. A separating EOS counts as part
of the document it ends. Only the current batch of documents and the unfinished context are held
in memory, whatever the corpus size.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING

from .corpus import iter_documents
from .errors import CorpusError
from .spec import CorpusSpec

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# Fast tokenizers parallelise across a batch; 64 documents keeps that busy without a big buffer.
_BATCH_DOCS = 64


@dataclass
class Context:
    tokens: list[int]  # length context_len, tokens[0] is BOS
    doc_ids: list[int]  # document index (iter_documents order) of each token; BOS takes the next


def iter_contexts(
    spec: CorpusSpec, tokenizer: PreTrainedTokenizerBase, context_len: int
) -> Iterator[Context]:
    """Packed contexts of exactly `context_len` tokens; the final partial one is dropped.

    Bad arguments raise CorpusError at the call; a corpus too small for one context raises
    CorpusError once exhausted.
    """
    if not isinstance(context_len, int) or context_len < 2:
        raise CorpusError(f"context_len must be an integer >= 2, got {context_len!r}")
    bos = tokenizer.bos_token_id
    if bos is None:
        bos = tokenizer.eos_token_id
    if bos is None:
        raise CorpusError("tokenizer has neither a BOS nor an EOS token to start contexts with")
    documents = iter_documents(spec)
    return _pack(spec, _tokenise(documents, tokenizer), bos, tokenizer.eos_token_id, context_len)


def count_tokens(
    spec: CorpusSpec, tokenizer: PreTrainedTokenizerBase, limit_docs: int | None = None
) -> dict[str, int]:
    """{"documents": n, "tokens": n} over the first `limit_docs` documents (all if None).

    Tokens are the documents' own, without the BOS/EOS that packing adds.
    """
    documents = islice(iter_documents(spec), limit_docs)
    n_docs = n_tokens = 0
    for _, ids in _tokenise(documents, tokenizer):
        n_docs += 1
        n_tokens += len(ids)
    return {"documents": n_docs, "tokens": n_tokens}


def _tokenise(
    documents: Iterable[str], tokenizer: PreTrainedTokenizerBase
) -> Iterator[tuple[int, list[int]]]:
    """(document index, token ids) pairs, tokenised a batch at a time."""
    documents = iter(documents)
    doc_id = 0
    while batch := list(islice(documents, _BATCH_DOCS)):
        # verbose=False: long documents are expected here, the max-length warning is noise.
        encoded = tokenizer(batch, add_special_tokens=False, verbose=False)["input_ids"]
        for ids in encoded:
            yield doc_id, ids
            doc_id += 1


def _pack(
    spec: CorpusSpec,
    tokenised: Iterator[tuple[int, list[int]]],
    bos: int,
    eos: int | None,
    context_len: int,
) -> Iterator[Context]:
    body = context_len - 1
    tokens: list[int] = []
    doc_ids: list[int] = []
    n_tokens = n_contexts = 0
    for doc_id, ids in tokenised:
        if doc_id > 0 and eos is not None:
            tokens.append(eos)
            doc_ids.append(doc_id - 1)
        tokens.extend(ids)
        doc_ids.extend([doc_id] * len(ids))
        n_tokens += len(ids)
        start = 0
        while len(tokens) - start >= body:
            end = start + body
            yield Context([bos, *tokens[start:end]], [doc_ids[start], *doc_ids[start:end]])
            n_contexts += 1
            start = end
        # Drop what was emitted in one go: trimming per context would be quadratic.
        del tokens[:start], doc_ids[:start]
    if n_contexts == 0:
        raise CorpusError(
            f"corpus {spec.source!r} has {n_tokens} tokens, too few for one context of "
            f"{context_len} (BOS + {body})"
        )
