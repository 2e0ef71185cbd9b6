"""The SAE file formats monoscope reads, and reading their files with clear errors.

| format    | files                                   |
|-----------|-----------------------------------------|
| monoscope | config.json + weights.safetensors       |
| SAELens   | cfg.json + sae_weights.safetensors      |
| sparsify  | cfg.json + sae.safetensors (EleutherAI) |

A monoscope folder also holds checksums.json (checksums.py), which `read_config` and
`read_tensors` verify when given it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors.torch import load_file
from torch import Tensor

from monoscope.artifacts import CorruptFileError, parse_json

if TYPE_CHECKING:
    from monoscope.sae.checksums import FolderChecksums

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"

FORMAT_FILES: dict[str, tuple[str, str]] = {
    "monoscope": (CONFIG_FILE, WEIGHTS_FILE),
    "saelens": ("cfg.json", "sae_weights.safetensors"),
    "sparsify": ("cfg.json", "sae.safetensors"),
}


class SAEFormatError(ValueError):
    """A folder that holds no SAE of a known format, or one that cannot be read."""


class CorruptSAEError(SAEFormatError):
    """An SAE file that is damaged: it does not parse, or does not match the checksums
    recorded when it was written (checksums.py)."""


def expected_files() -> str:
    return ", or ".join(f"{a} + {b} ({name})" for name, (a, b) in FORMAT_FILES.items())


def formats_in(folder: Path) -> list[str]:
    """The formats whose files are all present in `folder`."""
    return [
        name for name, files in FORMAT_FILES.items() if all((folder / f).is_file() for f in files)
    ]


RELEASE_DEPTH = 4
"""How deep `sae_folders_in` looks: SAELens releases nest their SAE ids up to three folders
deep (layer_12/width_16k/average_l0_82), sparsify checkpoints one (one per hookpoint)."""
LISTED = 20
"""How many SAE ids an error lists before '... and N more'."""


def sae_folders_in(folder: Path, depth: int = RELEASE_DEPTH) -> list[Path]:
    """The folders under `folder` (not itself) that hold an SAE of a known format, in natural
    order (`natural_key`): the SAE ids of a downloaded SAELens release, or the hookpoints of a
    sparsify checkpoint."""
    found: list[Path] = []
    if depth <= 0:
        return found
    children = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
    for child in sorted(children, key=lambda p: natural_key(p.name)):
        if formats_in(child):
            found.append(child)
        else:
            found.extend(sae_folders_in(child, depth - 1))
    return found


def natural_key(name: str) -> list[Any]:
    """Sort key that orders the numbers in names by value: layer_3 before layer_12."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def describe_held(
    held: list[Path], folder: Path | None = None, notes: list[str] | None = None, kind: str = ""
) -> str:
    """'3 SAEs in subfolders: a, b/c (note), d': the SAE folders `held` under `folder` (their
    common parent by default), each with its note where given, for errors; `kind` ('SAELens')
    names their format."""
    if folder is None:
        folder = held[0].parent
        while not all(p.is_relative_to(folder) for p in held):
            folder = folder.parent
    ids = [p.relative_to(folder).as_posix() for p in held]
    if notes:
        ids = [f"{name} ({note})" for name, note in zip(ids, notes, strict=True)]
    more = f", ... and {len(ids) - LISTED} more" if len(ids) > LISTED else ""
    kind = f"{kind} " if kind else ""
    noun = f"an {kind}SAE" if len(ids) == 1 else f"{len(ids)} {kind}SAEs"
    return f"{noun} in subfolders: {', '.join(ids[:LISTED])}{more}"


def read_tensors(path: Path, checks: FolderChecksums | None = None) -> dict[str, Tensor]:
    """The tensors in `path`, each verified as it is read when `checks` records the file."""
    if checks is not None and checks.recorded(path):
        return checks.read_tensors(path)
    try:
        return load_file(path)
    except Exception as err:  # safetensors raises its own error types for malformed files
        raise SAEFormatError(f"{path} cannot be read as safetensors: {err}") from err


def read_config(path: Path, checks: FolderChecksums | None = None) -> dict:
    """The JSON object in `path`, verified first when `checks` records the file."""
    data = checks.read_bytes(path) if checks is not None and checks.recorded(path) else None
    try:
        data = parse_json(path.read_bytes() if data is None else data, path)
    except CorruptFileError as err:
        raise CorruptSAEError(str(err)) from err
    if not isinstance(data, dict):
        raise SAEFormatError(f"{path} should hold a JSON object, not {type(data).__name__}")
    return data
