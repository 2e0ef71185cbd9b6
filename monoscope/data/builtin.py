"""The built-in corpus: English prose and Python code that ship with every Python installation.

Three kinds of document, so nothing has to be downloaded:
- each help topic of the language reference (`pydoc_data.topics`): prose;
- the docstrings of each standard-library source file, found with `ast` (never imported): prose
  about code;
- each standard-library source file itself: code.

The references (topic keys, file paths) are cheap to list and sorted, then shuffled by the seed;
each document is read only when reached, so iterating stays lazy. The corpus is deterministic for
a given seed and Python installation (another Python version ships other files).
"""

from __future__ import annotations

import ast
import os
import random
import sysconfig
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# Tests, third-party packages and bytecode caches are not the prose/code we want.
_EXCLUDED_DIRS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
)
# Larger files are generated tables or data (e.g. pydoc_data/topics.py itself), not typical code.
_MAX_FILE_BYTES = 300_000

_DOCSTRING_NODES = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


@dataclass(frozen=True)
class DocumentRef:
    kind: str  # "topic", "docstrings" or "source"
    key: str  # topic name, or path of a standard-library file


def builtin_corpus_documents(seed: int = 0) -> Iterator[str]:
    """Documents in seeded order; references whose document turns out empty are passed over."""
    for ref in document_refs(seed):
        text = _load(ref)
        if text is not None:
            yield text


def document_refs(seed: int = 0) -> list[DocumentRef]:
    from pydoc_data.topics import topics

    files = stdlib_source_files()
    refs = [DocumentRef("topic", key) for key in sorted(topics)]
    refs += [DocumentRef("docstrings", str(path)) for path in files]
    refs += [DocumentRef("source", str(path)) for path in files]
    random.Random(seed).shuffle(refs)
    return refs


def stdlib_source_files() -> list[Path]:
    """Standard-library `.py` files up to the size limit, sorted by path relative to the root."""
    root = Path(sysconfig.get_paths()["stdlib"])
    found: list[Path] = []
    for folder, dirs, names in os.walk(root):
        # Pruning here keeps a large site-packages from being walked at all.
        dirs[:] = [d for d in dirs if d not in _EXCLUDED_DIRS]
        for name in names:
            path = Path(folder, name)
            if name.endswith(".py") and 0 < path.stat().st_size <= _MAX_FILE_BYTES:
                found.append(path)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _load(ref: DocumentRef) -> str | None:
    if ref.kind == "topic":
        from pydoc_data.topics import topics

        return topics[ref.key]
    source = _read_utf8(Path(ref.key))
    if source is None:
        return None
    if ref.kind == "source":
        return source if source.strip() else None
    return _docstrings(source)


def _read_utf8(path: Path) -> str | None:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        return None


def _docstrings(source: str) -> str | None:
    """Module, class and function docstrings of one file, in source order, blank-line separated."""
    try:
        # Old stdlib files trigger SyntaxWarnings (invalid escapes); they are not our concern.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(source)
    except (SyntaxError, ValueError):  # ValueError: NUL bytes, on Python < 3.12
        return None
    nodes = [node for node in ast.walk(tree) if isinstance(node, _DOCSTRING_NODES)]
    # ast.walk is breadth-first; line numbers restore source order (the module has none: first).
    nodes.sort(key=lambda node: getattr(node, "lineno", 0))
    docs = [doc for node in nodes if (doc := ast.get_docstring(node))]
    return "\n\n".join(docs) or None
