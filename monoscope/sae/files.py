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

from pathlib import Path
from typing import TYPE_CHECKING

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
