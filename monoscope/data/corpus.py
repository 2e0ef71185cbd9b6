"""One entry point from a CorpusSpec to its documents, whatever the source."""

from __future__ import annotations

from collections.abc import Iterator

from .builtin import builtin_corpus_documents
from .files import iter_path_documents
from .hf import iter_hf_documents
from .spec import CorpusSpec


def iter_documents(spec: CorpusSpec) -> Iterator[str]:
    """Documents as strings, in a deterministic order for a given seed.

    The spec is validated now, so a bad path fails at the call rather than at first iteration.
    """
    spec.validate()
    if spec.hf_name is not None:
        return iter_hf_documents(
            spec.hf_name, spec.hf_config, spec.split, spec.text_field, spec.seed
        )
    if spec.path is not None:
        return iter_path_documents(spec.path, spec.text_field, spec.seed)
    return builtin_corpus_documents(spec.seed)
