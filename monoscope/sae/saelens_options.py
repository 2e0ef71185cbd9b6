"""The options of an SAELens cfg.json, read into what a monoscope SAE needs (saelens.py
says what each one means). Every option SAELens 6 writes for the architectures monoscope
reads has an exact counterpart here; the others are refused with the option named.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from monoscope.sae.config import SAEConfig
from monoscope.sae.files import SAEFormatError, read_config, read_tensors

ARCHITECTURES = {
    "standard": "relu",
    "topk": "topk",
    "jumprelu": "jumprelu",
    "gated": "gated",
    "batchtopk": "batchtopk",
    "matryoshka_batchtopk": "batchtopk",  # nested widths shape training only
    "transcoder": "relu",
    "skip_transcoder": "relu",
    "jumprelu_transcoder": "jumprelu",
    "jumprelu_skip_transcoder": "jumprelu",
}
"""SAELens architecture -> monoscope arch."""
TRANSCODERS = ("transcoder", "skip_transcoder", "jumprelu_transcoder", "jumprelu_skip_transcoder")
RESCALING = ("topk", "batchtopk", "matryoshka_batchtopk")
"""The SAELens architectures whose config has rescale_acts_by_decoder_norm."""
SCALER_FILE = "activation_scaler.json"
"""Where a SAELens training checkpoint keeps its 'expected_average_only_in' factor."""
WHITENING_FILE = "activation_whitening.safetensors"
"""Where it keeps its 'covariance_whitening' statistics: mean [d], matrix and inverse_matrix
[d, d] (z = (x - mean) matrix; x = z inverse_matrix + mean)."""
_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


@dataclass
class SAELensOptions:
    """What an SAELens cfg.json says, in monoscope's terms."""

    source: str
    arch: str
    d_in: Any
    n_features: Any
    k: int | None
    site: str | None
    model: str | None
    subtract_b_dec: bool
    input_norm: str
    expected_scale: float
    """'expected_average_only_in''s factor (1 otherwise): the weights are in its units."""
    folded_scale: float
    """The input_scale a monoscope export folded into the weights (1 otherwise)."""
    rescale_by_decoder_norm: bool
    whitening: dict[str, torch.Tensor] | None
    """A checkpoint's 'covariance_whitening' statistics, to fold into the weights."""
    transcoder: bool
    skip_connection: bool
    output_site: str | None
    dtype: torch.dtype
    raw: dict
    exported: dict | None

    @property
    def float64(self) -> bool:
        return self.dtype == torch.float64

    @property
    def working_dtype(self) -> torch.dtype:
        """float32, unless the file is float64 (held without rounding either way)."""
        return torch.float64 if self.float64 else torch.float32

    def config(self) -> SAEConfig:
        """The monoscope config (a ValueError for values it cannot hold)."""
        return SAEConfig(
            arch=self.arch,
            d_in=self.d_in,
            n_features=self.n_features,
            k=self.k,
            input_scale=self.folded_scale * self.expected_scale,
            site=self.site,
            model=self.model,
            subtract_b_dec_in_encoder=self.subtract_b_dec,
            training={"imported_from": "saelens", "source_config": self.raw},
            input_norm=self.input_norm,
            skip_connection=self.skip_connection,
            transcoder=self.transcoder,
            output_site=self.output_site,
        )


def read_options(folder: Path, raw: dict) -> SAELensOptions:
    """The options of `raw`, the cfg.json in `folder` (SAELens 6's layout, with model and hook
    under "metadata", or the flat one before it)."""
    source = str(folder / "cfg.json")
    meta = raw.get("metadata") or raw.get("meta") or {}

    def get(key: str) -> Any:
        return raw[key] if key in raw else meta.get(key)

    architecture = _architecture(raw, source)
    transcoder = architecture in TRANSCODERS
    if transcoder:
        _check_transcoder(raw, source)
    exported = raw.get("monoscope") if isinstance(raw.get("monoscope"), dict) else None
    input_norm, expected = _normalisation(raw, folder, source)
    whitening = (
        _whitening(folder, source)
        if raw.get("normalize_activations") == ("covariance_whitening")
        else None
    )
    return SAELensOptions(
        source=source,
        arch=ARCHITECTURES[architecture],
        d_in=raw.get("d_in"),
        n_features=raw.get("d_sae"),
        k=_k(raw, architecture, source),
        site=get("hook_name") or raw.get("hook_point"),  # hook_point: SAELens < 3
        model=get("model_name"),
        subtract_b_dec=bool(raw.get("apply_b_dec_to_input", True)),
        input_norm=input_norm,
        expected_scale=expected,
        folded_scale=float((exported or {}).get("input_scale", 1.0)),
        rescale_by_decoder_norm=architecture in RESCALING
        and bool(raw.get("rescale_acts_by_decoder_norm", False)),
        whitening=whitening,
        transcoder=transcoder,
        skip_connection="skip" in architecture,
        output_site=get("hook_name_out") if transcoder else None,
        dtype=_dtype(raw, source),
        raw=raw,
        exported=(exported or {}).get("config"),
    )


def _architecture(raw: dict, source: str) -> str:
    architecture = raw.get("architecture", "standard")
    activation = raw.get("activation_fn") or raw.get("activation_fn_str") or "relu"
    if architecture == "standard" and activation == "topk":
        return "topk"  # SAELens < 6 marked TopK SAEs by their activation function
    if architecture == "standard" and activation != "relu":
        raise SAEFormatError(f"{source}: activation function {activation!r} is not supported")
    if architecture not in ARCHITECTURES:
        raise SAEFormatError(
            f"{source}: SAELens architecture {architecture!r} is not supported "
            f"(supported: {', '.join(ARCHITECTURES)})"
        )
    return architecture


def _check_transcoder(raw: dict, source: str) -> None:
    """A transcoder monoscope holds exactly: output as wide as its input (our decoder writes
    d_in-wide rows), and no input normalisation (SAELens' transcoders normalise their input
    but do not map their output back)."""
    d_out = raw.get("d_out")
    if d_out != raw.get("d_in"):
        raise SAEFormatError(
            f"{source}: a transcoder with d_out={d_out!r} != d_in={raw.get('d_in')!r}: "
            "monoscope's decoders write rows as wide as the encoder reads"
        )
    if raw.get("normalize_activations") not in (None, False, "none"):
        raise SAEFormatError(
            f"{source}: a transcoder with normalize_activations="
            f"{raw['normalize_activations']!r} (its output is not mapped back) is not supported"
        )


def _k(raw: dict, architecture: str, source: str) -> int | None:
    """k of a topk SAE; the mean k of a batchtopk checkpoint (a whole number: monoscope's
    batch rule keeps rows * k latents); None for the others."""
    if ARCHITECTURES[architecture] not in ("topk", "batchtopk"):
        return None
    k = raw.get("k") or (raw.get("activation_fn_kwargs") or {}).get("k")
    if k is None:
        raise SAEFormatError(f"{source}: a {architecture} SAE without k")
    if isinstance(k, bool) or not isinstance(k, int | float) or not float(k).is_integer():
        raise SAEFormatError(f"{source}: k={k!r} is not a whole number of latents")
    return int(k)


def _normalisation(raw: dict, folder: Path, source: str) -> tuple[str, float]:
    """(input_norm, the expected-average factor) of normalize_activations."""
    value = raw.get("normalize_activations")
    if value in (None, False, "none"):
        return "none", 1.0
    if value in ("constant_norm_rescale", "layer_norm"):
        return value, 1.0
    if value in (True, "expected_average_only_in"):
        return "none", _expected_factor(raw, folder, source)
    if value == "covariance_whitening":
        return "none", 1.0  # an affine map: folded into the weights (saelens.py)
    raise SAEFormatError(f"{source}: normalize_activations={value!r} is not supported")


def _expected_factor(raw: dict, folder: Path, source: str) -> float:
    """The factor of 'expected_average_only_in': cfg.json's "norm_scaling_factor" (the value
    SAELens' pretrained_saes.yaml lists for a release), else a training checkpoint's
    activation_scaler.json."""
    factor = raw.get("norm_scaling_factor")
    scaler = folder / SCALER_FILE
    if factor is None and scaler.is_file():
        factor = read_config(scaler).get("scaling_factor")
    if (
        not isinstance(factor, int | float)
        or isinstance(factor, bool)
        or not (math.isfinite(factor) and factor > 0)
    ):
        raise SAEFormatError(
            f"{source}: normalize_activations='expected_average_only_in' needs its scaling "
            f'factor, and this folder has none ({SCALER_FILE}, or "norm_scaling_factor" in '
            "cfg.json): add the release's norm_scaling_factor (SAELens' pretrained_saes.yaml) "
            'to cfg.json as "norm_scaling_factor"'
        )
    return float(factor)


def _whitening(folder: Path, source: str) -> dict[str, torch.Tensor]:
    """A checkpoint's whitening statistics (float64, as SAELens keeps them)."""
    path = folder / WHITENING_FILE
    if not path.is_file():
        raise SAEFormatError(
            f"{source}: normalize_activations='covariance_whitening' needs its statistics "
            f"({WHITENING_FILE} beside cfg.json, as SAELens' checkpoints hold them), and this "
            "folder has none"
        )
    stats = read_tensors(path)
    missing = [k for k in ("mean", "matrix", "inverse_matrix") if k not in stats]
    if missing:
        raise SAEFormatError(f"{path}: missing tensors {missing}; it has {sorted(stats)}")
    return {key: stats[key].double() for key in ("mean", "matrix", "inverse_matrix")}


def _dtype(raw: dict, source: str) -> torch.dtype:
    name = str(raw.get("dtype") or "float32").removeprefix("torch.")
    if name not in _DTYPES:
        raise SAEFormatError(
            f"{source}: dtype {raw.get('dtype')!r} is not supported ({', '.join(_DTYPES)})"
        )
    return _DTYPES[name]
