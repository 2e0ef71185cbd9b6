"""checksums.json: what an SAE folder's files held when monoscope wrote them, verified on load.

    {"format": "monoscope.sae_checksums", "version": 1, "chunk_bytes": 67108864,
     "files": {"config.json": {"bytes": n, "sha256": hex},
               "weights.safetensors": {"bytes": n, "tensors": {
                   name: {"dtype": "float32", "shape": [d, n], "sha256": [hex, ...]}}}}}

Documents are hashed whole. A tensor is hashed in chunks of `chunk_bytes` of its data as stored
(row-major, little-endian), right after it is read: a load reads the file once and hashes from
memory, every core on one tensor's chunks (hashlib releases the GIL), so the check stays a
fraction of the read even for a 34M-feature SAE of hundreds of GB, and a mismatch names the
tensor and byte range. `load_sae(..., verify=False)` (the CLI's --no-verify) skips it.

The file is written before the files it describes: a save cut short leaves a folder that fails
verification rather than one that passes with stale weights. A folder without it (saved by an
older monoscope, or another tool's) loads unverified.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor

from monoscope.artifacts import CorruptFileError, atomic_write_json, read_json, sha256_bytes
from monoscope.runtime import dtype_name
from monoscope.sae.files import CorruptSAEError

CHECKSUMS_FILE = "checksums.json"
CHECKSUMS_FORMAT = "monoscope.sae_checksums"
CHECKSUMS_VERSION = 1
CHUNK_BYTES = 64 * 2**20
"""Bytes of tensor data per sha256: small enough to spread a large tensor over every core."""

NO_VERIFY_HINT = "restore it from a copy, or pass --no-verify to load it unchecked"

log = logging.getLogger(__name__)

_VERIFY: ContextVar[bool] = ContextVar("monoscope_verify_sae", default=True)


@contextmanager
def verification(enabled: bool) -> Iterator[None]:
    """Within the block, SAE loads that do not say (verify=None) verify or not: how the CLI's
    --no-verify reaches the loads inside a command."""
    token = _VERIFY.set(enabled)
    try:
        yield
    finally:
        _VERIFY.reset(token)


def verifying(verify: bool | None) -> bool:
    """`verify`, or the enclosing `verification` block's choice when None (default: True)."""
    return _VERIFY.get() if verify is None else verify


def hash_pool() -> ThreadPoolExecutor:
    """Threads for hashing: as many as torch's intra-op threads (runtime.configure_threads)."""
    return ThreadPoolExecutor(torch.get_num_threads())


def submit_digests(pool: ThreadPoolExecutor, t: Tensor, chunk_bytes: int) -> list[Future[str]]:
    """Queue the sha256 of each `chunk_bytes` of t's data as safetensors stores it (t is
    contiguous on the CPU, as read or about to be written)."""
    data = t.reshape(-1).view(torch.uint8).numpy()
    starts = range(0, max(len(data), 1), chunk_bytes)
    return [pool.submit(_sha256, data[s : s + chunk_bytes]) for s in starts]


def _sha256(data: Any) -> str:
    return hashlib.sha256(data).hexdigest()


def tensor_digests(t: Tensor, chunk_bytes: int = CHUNK_BYTES) -> list[str]:
    """sha256 of each `chunk_bytes` of t's data as safetensors stores it, hashed in threads."""
    with hash_pool() as pool:
        return [
            f.result() for f in submit_digests(pool, t.detach().cpu().contiguous(), chunk_bytes)
        ]


def write_checksums(
    folder: Path,
    documents: dict[str, bytes],
    weights: dict[str, tuple[int, dict[str, Tensor]]],
    chunk_bytes: int = CHUNK_BYTES,
) -> None:
    """folder/checksums.json for `documents` (file name -> its bytes) and `weights` (file name
    -> (its size in bytes, the tensors it holds))."""
    files: dict[str, Any] = {
        name: {"bytes": len(data), "sha256": sha256_bytes(data)} for name, data in documents.items()
    }
    with hash_pool() as pool:  # every tensor's chunks at once: two big matrices, two cores
        for name, (size, tensors) in weights.items():
            digests = {k: submit_digests(pool, v, chunk_bytes) for k, v in tensors.items()}
            entries = {
                k: {
                    "dtype": dtype_name(v.dtype),
                    "shape": list(v.shape),
                    "sha256": [f.result() for f in digests[k]],
                }
                for k, v in tensors.items()
            }
            files[name] = {"bytes": size, "tensors": entries}
    atomic_write_json(
        folder / CHECKSUMS_FILE,
        {
            "format": CHECKSUMS_FORMAT,
            "version": CHECKSUMS_VERSION,
            "chunk_bytes": chunk_bytes,
            "files": files,
        },
    )


@dataclass(frozen=True)
class FolderChecksums:
    """The checksums.json of one SAE folder, and reads of its files checked against it."""

    path: Path
    files: dict[str, dict[str, Any]]
    chunk_bytes: int

    def recorded(self, path: Path) -> bool:
        return path.parent == self.path.parent and path.name in self.files

    def read_bytes(self, path: Path) -> bytes:
        """A document's bytes, checked against its recorded size and sha256."""
        data = path.read_bytes()
        entry = self.files[path.name]
        if len(data) != entry.get("bytes") or sha256_bytes(data) != entry.get("sha256"):
            raise CorruptSAEError(
                f"{path} has changed since it was saved (its sha256 differs from "
                f"{self.path}): it is damaged or was edited; {NO_VERIFY_HINT}"
            )
        return data

    def read_tensors(self, path: Path) -> dict[str, Tensor]:
        """A safetensors file's tensors, each checked as it is read."""
        entry = self.files[path.name]
        size = path.stat().st_size
        if size != entry.get("bytes"):
            raise CorruptSAEError(
                f"{path} is truncated or padded: {size:,} bytes, {self.path.name} records "
                f"{entry.get('bytes'):,}; {NO_VERIFY_HINT}"
            )
        expected: dict[str, dict] = entry.get("tensors") or {}
        try:
            with safe_open(path, framework="pt") as f, hash_pool() as pool:
                names = list(f.keys())  # in file order
                if set(names) != set(expected):
                    raise CorruptSAEError(
                        f"{path} holds tensors {sorted(names)}, {self.path.name} records "
                        f"{sorted(expected)}; {NO_VERIFY_HINT}"
                    )
                # Each tensor's hashes run while the next one is read.
                tensors, pending = {}, []
                for k in names:
                    tensors[k] = self._laid_out(path, k, f.get_tensor(k), expected[k])
                    pending.append((k, submit_digests(pool, tensors[k], self.chunk_bytes)))
                for k, futures in pending:
                    self._check_digests(path, k, tensors[k], futures, expected[k])
                return tensors
        except CorruptSAEError:
            raise
        except Exception as err:  # safetensors raises its own error types for malformed files
            raise CorruptSAEError(
                f"{path} cannot be read as safetensors ({err}): it is damaged; {NO_VERIFY_HINT}"
            ) from err

    def _laid_out(self, path: Path, name: str, t: Tensor, entry: dict) -> Tensor:
        """t, checked to have its recorded dtype and shape."""
        if dtype_name(t.dtype) != entry.get("dtype") or list(t.shape) != entry.get("shape"):
            raise CorruptSAEError(
                f"{path}: tensor {name} is {dtype_name(t.dtype)} {list(t.shape)}, "
                f"{self.path.name} records {entry.get('dtype')} {entry.get('shape')}; "
                f"{NO_VERIFY_HINT}"
            )
        return t

    def _check_digests(
        self, path: Path, name: str, t: Tensor, futures: list[Future[str]], entry: dict
    ) -> None:
        recorded = entry.get("sha256") or []
        if len(futures) != len(recorded):
            raise CorruptSAEError(
                f"{self.path} is damaged: it records {len(recorded)} hashes for {name}, whose "
                f"data takes {len(futures)}; {NO_VERIFY_HINT}"
            )
        for i, (future, want) in enumerate(zip(futures, recorded, strict=True)):
            if future.result() != want:
                size = t.numel() * t.element_size()
                start, stop = i * self.chunk_bytes, min((i + 1) * self.chunk_bytes, size)
                raise CorruptSAEError(
                    f"{path} is damaged: tensor {name} (bytes {start:,}..{stop:,} of its data) "
                    f"does not match its sha256 in {self.path.name}; {NO_VERIFY_HINT}"
                )


def open_checksums(folder: Path, verify: bool | None) -> FolderChecksums | None:
    """The folder's checksums when verifying and it has some; CorruptSAEError if checksums.json
    itself is unreadable."""
    path = folder / CHECKSUMS_FILE
    if not verifying(verify) or not path.is_file():
        return None
    try:
        doc = read_json(path)
    except CorruptFileError as err:
        raise CorruptSAEError(f"{err}; {NO_VERIFY_HINT}") from err
    if not isinstance(doc, dict) or doc.get("format") != CHECKSUMS_FORMAT:
        raise CorruptSAEError(f"{path} is not a monoscope checksums file; {NO_VERIFY_HINT}")
    if doc.get("version") != CHECKSUMS_VERSION:
        raise CorruptSAEError(
            f"{path} has version {doc.get('version')}; this monoscope reads version "
            f"{CHECKSUMS_VERSION}: upgrade monoscope, or pass --no-verify"
        )
    files, chunk = doc.get("files"), doc.get("chunk_bytes")
    if not isinstance(files, dict) or not isinstance(chunk, int) or chunk <= 0:
        raise CorruptSAEError(f"{path} is damaged (no files or chunk_bytes); {NO_VERIFY_HINT}")
    return FolderChecksums(path, files, chunk)


def warn_unverified(folder: Path) -> None:
    """One line for a monoscope folder without checksums (saved by an older monoscope)."""
    log.warning(
        "%s has no %s (saved by an older monoscope): loaded without verifying its files; "
        "`monoscope convert %s --to monoscope --out NEW` writes a copy that carries them",
        folder,
        CHECKSUMS_FILE,
        folder,
    )
