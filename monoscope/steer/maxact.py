"""Each feature's maximum activation: the unit of "10x" steering values.

Two sources, and the result says which was used:
- the feature store (`monoscope analyze`): features.max_act over the analysed tokens;
- an activation store: the SAE encodes a bounded sample of its train split (skipping the tokens
  the trainer skipped as outliers, `cfg.training["max_norm"]`) and the per-feature max is taken.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from monoscope.sae import SparseAutoencoder
from monoscope.steer.spec import SteeringError

DEFAULT_SAMPLE_TOKENS = 65_536
"""Tokens of an activation store encoded to estimate max activations: enough for the largest
values, few enough to encode in seconds on a CPU (docs/LOG.md)."""


@dataclass
class MaxActivations:
    """values [n_features] in the SAE's activation convention, and where they came from."""

    values: Tensor
    source: dict[str, Any]

    def of(self, feature: int) -> float:
        value = float(self.values[feature])
        if value <= 0:
            raise SteeringError(
                f"feature {feature} never fired in {describe(self.source)}, so a multiple of its "
                f"max activation means nothing: give an absolute value"
            )
        return value


def describe(source: dict[str, Any]) -> str:
    """'the feature store runs/a/features.db' or 'a sample of 65,536 tokens of runs/a/acts'."""
    if source.get("kind") == "feature_store":
        return f"the feature store {source['path']}"
    if source.get("kind") == "acts":
        return f"a sample of {source['tokens']:,} tokens of the activation store {source['path']}"
    return str(source)


def from_feature_store(
    path: str | Path, sae: SparseAutoencoder, sae_dir: str | Path | None = None
) -> MaxActivations:
    """features.max_act of a complete feature store built for this SAE (checked by feature
    count, activation convention and, when `sae_dir` is given, the weights' sha256)."""
    from monoscope.analyze.schema import FeatureStoreError, open_readonly, read_meta
    from monoscope.artifacts import sha256_file
    from monoscope.sae.files import WEIGHTS_FILE

    try:
        conn = open_readonly(path)
    except FeatureStoreError as err:
        raise SteeringError(str(err)) from err
    try:
        meta = read_meta(conn)
        if not meta.get("complete"):
            raise SteeringError(f"feature store {path} is incomplete: finish `monoscope analyze`")
        info = meta.get("sae") or {}
        if info.get("n_features") != sae.cfg.n_features:
            raise SteeringError(
                f"feature store {path} describes an SAE of {info.get('n_features')} features, "
                f"this SAE has {sae.cfg.n_features}"
            )
        convention = info.get("activation_convention")
        if convention not in (None, sae.cfg.activation_convention):
            raise SteeringError(
                f"feature store {path} holds activations as {convention!r}, this SAE reports "
                f"{sae.cfg.activation_convention!r}"
            )
        weights = Path(sae_dir) / WEIGHTS_FILE if sae_dir is not None else None
        known = weights is not None and info.get("sha256") and weights.is_file()
        if known and weights is not None and sha256_file(weights) != info["sha256"]:
            raise SteeringError(
                f"feature store {path} was built for other SAE weights than {weights}"
            )
        values = torch.zeros(sae.cfg.n_features)
        for feature, max_act in conn.execute("SELECT id, max_act FROM features"):
            if 0 <= feature < sae.cfg.n_features:
                values[feature] = max_act
    finally:
        conn.close()
    return MaxActivations(values, {"kind": "feature_store", "path": str(path)})


@torch.no_grad()
def from_activation_store(
    path: str | Path,
    sae: SparseAutoencoder,
    max_tokens: int = DEFAULT_SAMPLE_TOKENS,
    batch_size: int = 4096,
) -> MaxActivations:
    """Per-feature max of `sae.encode` over the first `max_tokens` train-split tokens of the
    activation store at `path` (outlier tokens skipped as in training)."""
    from monoscope.harvest import ActivationStore, StoreError

    try:
        store = ActivationStore(path)
        site = store.resolve_site(sae.cfg.site)
    except StoreError as err:
        raise SteeringError(f"max activations from {path}: {err}") from err
    if store.d(site) != sae.cfg.d_in:
        raise SteeringError(
            f"activation store {path} has width {store.d(site)} at {site}, the SAE reads "
            f"{sae.cfg.d_in}"
        )
    max_norm = (sae.cfg.training or {}).get("max_norm")
    param = next(sae.parameters())
    values = torch.zeros(sae.cfg.n_features, device=param.device)
    seen = 0
    for acts, _ in store.rows(site, "train", max_norm=max_norm):
        for x in acts[: max_tokens - seen].split(batch_size):
            f = sae.encode(x.to(param.device, param.dtype))
            values = torch.maximum(values, f.max(0).values)
            seen += x.shape[0]
        if seen >= max_tokens:
            break
    if seen == 0:
        raise SteeringError(f"activation store {path} has no train-split tokens to sample")
    source = {"kind": "acts", "path": str(path), "tokens": seen, "max_norm": max_norm}
    return MaxActivations(values.cpu(), source)
