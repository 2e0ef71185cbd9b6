"""The model and SAE behind a feature store, loaded on first use and shared by every endpoint
that runs them ("what fires", steering, attribution).

Loading takes seconds, so it waits for the first request that needs it: browsing never does.
`lock` must be held around loading and every use: the steering hooks patch the one model in
place, so two requests running it at once would see each other's edits (and torch already uses
every core for one).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import torch

from monoscope.analyze.recorded import RecordedFolderMissing, locate
from monoscope.artifacts import sha256_file
from monoscope.runtime import resolve_device


class ModelUnavailable(RuntimeError):
    """The model or the SAE named by the store cannot be loaded (or does not fit it)."""


class ServedModel:
    """Model + SAE of one feature store (`meta` its meta entries), loaded lazily on `device`
    (default: CUDA when present, else the CPU); the device is resolved here, so that one that
    is not there fails at startup, not on the first request that loads."""

    def __init__(
        self,
        meta: dict[str, Any],
        db_path: str | Path,
        model: str | None = None,
        device: str | torch.device = "auto",
    ) -> None:
        sae = meta.get("sae") or {}
        self.device = resolve_device(device)
        self.db_path = Path(db_path)
        self.model_name = model or (meta.get("model") or {}).get("name") or sae.get("model")
        self.sae_recorded = sae.get("path")
        self.sae_path: Path | None = None  # found on first load (see analyze/recorded.py)
        self.sae_sha256 = sae.get("sha256")
        self.site = sae.get("site")
        self.lock = threading.Lock()
        self._lm = self._sae = self._max_acts = None
        self._checked = False

    def load(self):
        """(LanguageModel, SparseAutoencoder) on `device`; hold `lock` while calling and using."""
        if self._lm is None:
            from monoscope.models import load_model
            from monoscope.sae import load_sae

            if not self.model_name or not self.site:
                raise ModelUnavailable("the feature store names no model or site: pass --model")
            try:
                self.sae_path = locate(self.sae_recorded, self.db_path, "SAE")
            except RecordedFolderMissing as err:
                raise ModelUnavailable(str(err)) from err
            weights = self.sae_path / "weights.safetensors"
            if self.sae_sha256 and weights.is_file() and sha256_file(weights) != self.sae_sha256:
                raise ModelUnavailable(
                    f"the SAE in {self.sae_path} has changed since this feature store was built "
                    "(sha256 differs): rerun `monoscope analyze`"
                )
            try:
                sae = load_sae(self.sae_path, device=self.device)
                lm = load_model(self.model_name, device=self.device)
            except (OSError, ValueError) as err:
                raise ModelUnavailable(f"cannot load the model or SAE: {err}") from err
            self._lm, self._sae = lm, sae
        return self._lm, self._sae

    def load_checked(self):
        """`load`, with the SAE checked to fit the model (its model name, site and width), as
        steering and attribution need; hold `lock`."""
        from monoscope.steer import SteeringError, check_sae

        lm, sae = self.load()
        if not self._checked:
            try:
                check_sae(lm, sae)
            except SteeringError as err:
                raise ModelUnavailable(f"cannot steer with this store's SAE: {err}") from err
            self._checked = True
        return lm, sae

    def max_acts(self):
        """The store's per-feature max activations (`MaxActivations`, the unit of "5x"
        strengths), read once; hold `lock`."""
        if self._max_acts is None:
            from monoscope.steer import SteeringError, from_feature_store

            _, sae = self.load_checked()
            try:
                self._max_acts = from_feature_store(self.db_path, sae, self.sae_path)
            except SteeringError as err:
                raise ModelUnavailable(f"cannot steer with this store's SAE: {err}") from err
        return self._max_acts
