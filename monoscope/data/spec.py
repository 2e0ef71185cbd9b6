"""Which corpus to read, as a small value that round-trips through JSON (it goes into manifests)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from .errors import CorpusError
from .files import SUPPORTED_SUFFIXES

BUILTIN = "builtin"
HF_PREFIX = "hf:"


@dataclass(frozen=True)
class CorpusSpec:
    """`source` is "builtin", a local file or folder, or "hf:NAME" (hub name or local dataset dir).

    `seed` shuffles document order: the built-in corpus, the files of a folder, and a Hugging Face
    stream (through a shuffle buffer). Documents inside one local file keep their file order.
    """

    source: str
    text_field: str = "text"
    hf_config: str | None = None
    split: str = "train"
    seed: int = 0

    @property
    def hf_name(self) -> str | None:
        """The dataset name after 'hf:', or None for other sources."""
        return self.source[len(HF_PREFIX) :] if self.source.startswith(HF_PREFIX) else None

    @property
    def path(self) -> Path | None:
        """The local file or folder, or None for the built-in and Hugging Face sources."""
        if self.source == BUILTIN or self.hf_name is not None:
            return None
        return Path(self.source).expanduser()

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> CorpusSpec:
        if not isinstance(d, dict):
            raise CorpusError(f"corpus spec must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise CorpusError(f"corpus spec has unknown keys {unknown}; known: {sorted(known)}")
        if "source" not in d:
            raise CorpusError("corpus spec has no 'source'")
        spec = cls(**d)
        spec.validate()
        return spec

    def validate(self) -> None:
        """Cheap checks only (no file is opened): types, source form, path existence."""
        if not isinstance(self.source, str) or not self.source:
            raise CorpusError(f"corpus source must be a non-empty string, got {self.source!r}")
        if not isinstance(self.text_field, str) or not self.text_field:
            raise CorpusError(f"text_field must be a non-empty string, got {self.text_field!r}")
        config = self.hf_config
        if config is not None and (not isinstance(config, str) or not config):
            raise CorpusError(f"hf_config must be None or a non-empty string, got {config!r}")
        if not isinstance(self.split, str) or not self.split:
            raise CorpusError(f"split must be a non-empty string, got {self.split!r}")
        # bool is an int subclass; a JSON `true` seed is a mistake, not seed 1.
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise CorpusError(f"seed must be an integer, got {self.seed!r}")
        if self.hf_name == "":
            raise CorpusError("corpus source 'hf:' needs a dataset name or folder after the colon")
        path = self.path
        if path is None:
            return
        if not path.exists():
            raise CorpusError(f"corpus path does not exist: {path}")
        if path.is_file() and path.suffix.lower() not in SUPPORTED_SUFFIXES:
            raise CorpusError(
                f"{path}: unsupported corpus file type {path.suffix!r}; "
                f"supported: {', '.join(SUPPORTED_SUFFIXES)}"
            )
