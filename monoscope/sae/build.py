"""`build_sae` makes a freshly initialised SAE from a config; `empty_sae` one to load into."""

from __future__ import annotations

import torch

from monoscope.sae.base import SparseAutoencoder
from monoscope.sae.config import SAEConfig
from monoscope.sae.registry import SAE_CLASSES


def empty_sae(cfg: SAEConfig) -> SparseAutoencoder:
    """An SAE of the config's architecture with zero parameters (to load weights into)."""
    return SAE_CLASSES[cfg.arch](cfg)


def build_sae(cfg: SAEConfig, seed: int = 0) -> SparseAutoencoder:
    """An SAE initialised as its architecture's paper does, on the CPU in float32."""
    sae = empty_sae(cfg)
    sae.reset_parameters(torch.Generator().manual_seed(seed))
    return sae
