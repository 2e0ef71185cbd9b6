"""Loading an SAE from a folder in any format monoscope reads (see files.py), detected."""

from __future__ import annotations

from pathlib import Path

import torch

from monoscope.sae.base import SparseAutoencoder
from monoscope.sae.build import empty_sae
from monoscope.sae.checksums import open_checksums, verifying, warn_unverified
from monoscope.sae.config import SAEConfig
from monoscope.sae.files import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    SAEFormatError,
    describe_held,
    expected_files,
    formats_in,
    read_config,
    read_tensors,
    sae_folders_in,
)
from monoscope.sae.saelens import describe_release, load_saelens
from monoscope.sae.sparsify import describe_checkpoint, load_sparsify


def detect_format(folder: str | Path) -> str:
    """'monoscope', 'saelens' or 'sparsify': the format of the SAE in `folder`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SAEFormatError(f"{folder} is not a folder; an SAE folder holds {expected_files()}")
    found = formats_in(folder)
    if len(found) == 1:
        return found[0]
    if found:
        raise SAEFormatError(f"{folder} holds SAE files of several formats {found}: keep one")
    for kind, describe in (("checkpoint", describe_checkpoint), ("release", describe_release)):
        held = describe(folder)
        if held:
            raise SAEFormatError(f"{folder} is a {kind} folder: it {held}: pass one of them")
    nested = sae_folders_in(folder)
    if nested:
        raise SAEFormatError(f"{folder} holds {describe_held(nested)}: pass one of them")
    raise SAEFormatError(f"{folder} holds no SAE: expected {expected_files()}")


def load_monoscope(folder: str | Path, verify: bool | None = None) -> SparseAutoencoder:
    """Read an SAE written by `SparseAutoencoder.save`; `verify` as in `load_sae`."""
    folder = Path(folder)
    checks = open_checksums(folder, verify)
    if checks is None and verifying(verify):
        warn_unverified(folder)
    raw = read_config(folder / CONFIG_FILE, checks)
    try:
        cfg = SAEConfig.from_json(raw)
    except (ValueError, TypeError) as err:
        raise SAEFormatError(f"{folder / CONFIG_FILE}: {err}") from err
    sae = empty_sae(cfg)
    sae.load_weights(read_tensors(folder / WEIGHTS_FILE, checks), str(folder / WEIGHTS_FILE))
    return sae


def load_sae(
    folder: str | Path, device: str | torch.device | None = None, verify: bool | None = None
) -> SparseAutoencoder:
    """Load the SAE in `folder` (monoscope, SAELens or sparsify format), in eval mode.

    verify: check its files against the folder's checksums.json as they are read (a
    CorruptSAEError names a damaged file); None: yes, unless inside
    `monoscope.sae.checksums.verification(False)` (the CLI's --no-verify). A folder without
    checksums loads unverified.
    """
    loaders = {"monoscope": load_monoscope, "saelens": load_saelens, "sparsify": load_sparsify}
    sae = loaders[detect_format(folder)](Path(folder), verify)
    if device is not None:
        sae = sae.to(device)
    return sae.eval()
