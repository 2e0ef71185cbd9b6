"""On-disk formats shared by every stage: atomic writes, checksums, JSON documents.

Every file monoscope writes goes through `atomic_write_bytes` (temp file in the same folder,
fsync, rename), so a crash or a full disk never leaves a half-written file under its real name.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

STORE_FORMAT_VERSION = 1
"""Version of the activation-store layout (`manifest.json` + safetensors shards)."""


def _read_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


UMASK = _read_umask()
"""The process's umask, read once at import: new files get 0o666 & ~UMASK, folders 0o777 &
~UMASK, as `open()` and `mkdir` would give them."""


def temp_file_beside(path: Path) -> tuple[int, str]:
    """(fd, name) of a new temp file in `path`'s folder, to be renamed onto `path`, with the
    permissions a plain new file gets (mkstemp's own 0o600 would make every store, SAE and
    database private to its writer)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    if hasattr(os, "fchmod"):  # POSIX
        os.fchmod(fd, 0o666 & ~UMASK)
    return fd, tmp


def remove_write_debris(folder: Path, prefix: str = "") -> None:
    """Delete the temp files (`temp_file_beside`'s) of atomic writes that a killed run left in
    `folder`, those of files whose names start with `prefix`; call it only with the folder's
    writer lock held, or where no other run can be writing."""
    for debris in folder.glob(f".{prefix}*.tmp"):
        if debris.is_file():
            debris.unlink(missing_ok=True)


def temp_dir_beside(path: Path) -> Path:
    """A new temp folder in `path`'s folder, to be renamed onto `path`, with the permissions
    `mkdir` gives (mkdtemp's own 0o700 would hide an exported site from a web server)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    tmp.chmod(0o777 & ~UMASK)
    return tmp


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` so that readers see either the old file or the whole new one."""
    path = Path(path)
    fd, tmp = temp_file_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # Full disk, interrupt, anything: never leave the temp file behind.
        Path(tmp).unlink(missing_ok=True)
        raise


class CorruptFileError(ValueError):
    """A file monoscope wrote that cannot be read back: truncated, damaged or edited."""


def json_bytes(obj: Any) -> bytes:
    """`obj` as the indented JSON text `atomic_write_json` writes (what a checksum covers)."""
    return (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode()


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    atomic_write_bytes(path, json_bytes(obj))


def read_json(path: str | os.PathLike) -> Any:
    """The JSON document in `path`; CorruptFileError naming the file if it does not parse."""
    return parse_json(Path(path).read_bytes(), path)


def parse_json(data: bytes, path: str | os.PathLike) -> Any:
    """The JSON document `data` read from `path`; CorruptFileError naming `path` if it is not
    one (json's own "Unterminated string ..." says neither which file nor what to do)."""
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise CorruptFileError(
            f"{path} is damaged: byte {err.start} is not UTF-8 text, so it is not JSON"
        ) from err
    except json.JSONDecodeError as err:
        raise CorruptFileError(
            f"{path} is not valid JSON ({err.msg} at line {err.lineno} column {err.colno}): "
            "the file is damaged or truncated"
        ) from err


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


SEAL = "checksum"
"""Key of a sealed JSON document's own checksum (see `write_sealed_json`)."""


def _seal(obj: dict) -> str:
    """sha256 of `obj` (without its seal) in one canonical spelling, so that reindenting the
    file keeps it valid while any changed value does not."""
    body = {k: v for k, v in obj.items() if k != SEAL}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + sha256_bytes(text.encode())


def write_sealed_json(path: str | os.PathLike, obj: dict) -> None:
    """Write `obj` atomically with a checksum of its own contents under `SEAL`: a file that
    is rewritten as a run goes (a manifest) cannot be checksummed by another file, and a
    flipped digit in it would otherwise pass for a value."""
    atomic_write_json(path, {**{k: v for k, v in obj.items() if k != SEAL}, SEAL: _seal(obj)})


def read_sealed_json(path: str | os.PathLike) -> dict:
    """The document `write_sealed_json` wrote, without its seal; CorruptFileError naming the
    file if it does not parse or its contents no longer match the seal. A document with no
    seal (written before seals existed) is returned as it is."""
    obj = read_json(path)
    if not isinstance(obj, dict):
        raise CorruptFileError(f"{path} is damaged: it holds no JSON object")
    if SEAL in obj and obj[SEAL] != _seal(obj):
        raise CorruptFileError(
            f"{path} is damaged or was edited: its contents no longer match its {SEAL!r}"
        )
    return {k: v for k, v in obj.items() if k != SEAL}
