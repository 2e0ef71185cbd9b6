"""The SAE file formats monoscope reads, and reading their files with clear errors.

| format    | files                                   |
|-----------|-----------------------------------------|
| monoscope | config.json + weights.safetensors       |
| SAELens   | cfg.json + sae_weights.safetensors      |
| sparsify  | cfg.json + sae.safetensors (EleutherAI) |
"""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file
from torch import Tensor

from monoscope.artifacts import read_json

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"

FORMAT_FILES: dict[str, tuple[str, str]] = {
    "monoscope": (CONFIG_FILE, WEIGHTS_FILE),
    "saelens": ("cfg.json", "sae_weights.safetensors"),
    "sparsify": ("cfg.json", "sae.safetensors"),
}


class SAEFormatError(ValueError):
    """A folder that holds no SAE of a known format, or one that cannot be read."""


def expected_files() -> str:
    return ", or ".join(f"{a} + {b} ({name})" for name, (a, b) in FORMAT_FILES.items())


def formats_in(folder: Path) -> list[str]:
    """The formats whose files are all present in `folder`."""
    return [
        name for name, files in FORMAT_FILES.items() if all((folder / f).is_file() for f in files)
    ]


def read_tensors(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(path)
    except Exception as err:  # safetensors raises its own error types for malformed files
        raise SAEFormatError(f"{path} cannot be read as safetensors: {err}") from err


def read_config(path: Path) -> dict:
    try:
        data = read_json(path)
    except ValueError as err:
        raise SAEFormatError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise SAEFormatError(f"{path} should hold a JSON object, not {type(data).__name__}")
    return data
