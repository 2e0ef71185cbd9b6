"""Documents from local files: .txt (whole file), .jsonl (one object a line), .parquet (a column).

Nothing is skipped silently: an empty file, a bad line or a missing field is a CorpusError that
names the file and line, because a quietly shrunken corpus is worse than a loud failure.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import CorpusError

SUPPORTED_SUFFIXES = (".jsonl", ".parquet", ".txt")

# Arrow record batches of this many rows bound memory for parquet files with huge row groups.
_PARQUET_BATCH_ROWS = 1024


def iter_path_documents(path: Path, text_field: str, seed: int) -> Iterator[str]:
    """Documents of one file, or of every supported file under a folder in seeded order."""
    if not path.is_dir():
        yield from iter_file_documents(path, text_field)
        return
    files = list_corpus_files(path)
    random.Random(seed).shuffle(files)
    for file in files:
        yield from iter_file_documents(file, text_field)


def list_corpus_files(root: Path) -> list[Path]:
    """Supported files under `root`, recursively, sorted by relative path; empty files rejected."""
    files = sorted(
        (p for p in root.rglob("*") if p.suffix.lower() in SUPPORTED_SUFFIXES and p.is_file()),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    if not files:
        raise CorpusError(
            f"{root}: folder has no corpus files (supported: {', '.join(SUPPORTED_SUFFIXES)})"
        )
    # Checked up front so a long run does not die on the hundredth file.
    for file in files:
        _require_bytes(file)
    return files


def iter_file_documents(path: Path, text_field: str) -> Iterator[str]:
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise CorpusError(
            f"{path}: unsupported corpus file type {path.suffix!r}; "
            f"supported: {', '.join(SUPPORTED_SUFFIXES)}"
        )
    _require_bytes(path)
    yield from reader(path, text_field)


def _require_bytes(path: Path) -> None:
    if path.stat().st_size == 0:
        raise CorpusError(f"{path}: empty file (0 bytes)")


def _decode(data: bytes, where: str, file_offset: int = 0) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorpusError(
            f"{where}: not valid UTF-8 (byte offset {file_offset + e.start} in the file)"
        ) from None


def _read_txt(path: Path, _text_field: str) -> Iterator[str]:
    text = _decode(path.read_bytes(), str(path))
    if not text.strip():
        raise CorpusError(f"{path}: empty file (only whitespace)")
    yield text


def _read_jsonl(path: Path, text_field: str) -> Iterator[str]:
    seen_object = False
    offset = 0
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            where = f"{path}:{lineno}"
            line = _decode(raw, where, offset)
            offset += len(raw)
            if not line.strip():
                continue
            seen_object = True
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise CorpusError(f"{where}: not valid JSON ({e.msg}, column {e.colno})") from None
            if not isinstance(obj, dict):
                raise CorpusError(f"{where}: expected a JSON object, got {type(obj).__name__}")
            if text_field not in obj:
                raise CorpusError(
                    f"{where}: object has no field {text_field!r}; its keys are {sorted(obj)}"
                )
            text = obj[text_field]
            if not isinstance(text, str):
                raise CorpusError(
                    f"{where}: field {text_field!r} is {type(text).__name__}, not a string"
                )
            yield text
    if not seen_object:
        raise CorpusError(f"{path}: empty file (only blank lines)")


def _read_parquet(path: Path, text_field: str) -> Iterator[str]:
    pa, pq = _import_pyarrow()
    try:
        pf = pq.ParquetFile(path)
    except pa.ArrowException as e:
        raise CorpusError(f"{path}: not a readable parquet file ({e})") from None
    schema = pf.schema_arrow
    if text_field not in schema.names:
        raise CorpusError(f"{path}: no column {text_field!r}; its columns are {schema.names}")
    kind = schema.field(text_field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise CorpusError(f"{path}: column {text_field!r} has type {kind}, not string")
    if pf.metadata.num_rows == 0:
        raise CorpusError(f"{path}: empty file (no rows)")
    row = 0
    for batch in pf.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=[text_field]):
        for text in batch.column(0).to_pylist():
            if text is None:
                raise CorpusError(f"{path}: row {row}: column {text_field!r} is null")
            row += 1
            yield text


def _import_pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ImportError(
            "reading .parquet corpora needs pyarrow: pip install 'monoscope[hf]'"
        ) from e
    return pa, pq


_READERS: dict[str, Callable[[Path, str], Iterator[str]]] = {
    ".jsonl": _read_jsonl,
    ".parquet": _read_parquet,
    ".txt": _read_txt,
}
