"""SAELens interop: cfg.json + sae_weights.safetensors, as `SAE.load_from_disk` reads them.

SAELens applies `(x - b_dec * apply_b_dec_to_input) @ W_enc + b_enc`, its activation, then
`f @ W_dec + b_dec`, on raw activations. Exports fold what SAELens has no field for into the
weights, so raw-unit reconstructions and encode() are unchanged:

- input_scale s: W_enc' = s W_enc, W_dec' = W_dec / s, b_dec' = b_dec / s (pre-activations and
  thresholds unchanged: (x - b_dec/s) (s W_enc) = (s x - b_dec) W_enc);
- relu ("standard", which reports f itself): the decoder norms n_i, W_enc'[:, i] = n_i W_enc[:, i],
  b_enc'[i] = n_i b_enc[i], W_dec'[i] = W_dec[i] / n_i, so SAELens' f' = f_i n_i, our reporting;
- batchtopk: exported as "jumprelu" with its learned threshold for every latent, which is exactly
  its inference rule.

The config is SAELens' flat pre-6.0 layout, which SAELens 6 still reads (it converts it), plus a
"monoscope" entry that SAELens ignores and our importer uses to restore input_scale, and the
whole monoscope config: a batchtopk SAE then comes back as batchtopk, with its training record.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as save_bytes
from torch import Tensor

from monoscope.artifacts import atomic_write_bytes, atomic_write_json
from monoscope.runtime import dtype_name
from monoscope.sae.base import SparseAutoencoder
from monoscope.sae.build import empty_sae
from monoscope.sae.config import SAE_FORMAT, SAE_FORMAT_VERSION, SAEConfig
from monoscope.sae.files import FORMAT_FILES, SAEFormatError, read_config, read_tensors
from monoscope.sae.jumprelu import JumpReLUSAE

CFG_FILE, WEIGHTS_FILE = FORMAT_FILES["saelens"]

_EXPORT_ARCH = {"relu": "standard", "topk": "topk", "batchtopk": "jumprelu", "jumprelu": "jumprelu"}
_IMPORT_ARCH = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu"}


@torch.no_grad()
def export_saelens(sae: SparseAutoencoder, folder: str | Path) -> Path:
    """Write `sae` to folder/cfg.json + folder/sae_weights.safetensors for SAELens."""
    cfg = sae.cfg
    if cfg.arch not in _EXPORT_ARCH:
        raise ValueError(
            f"a {cfg.arch!r} dictionary is not an SAE SAELens loads (monoscope's own format "
            "keeps it: --to monoscope)"
        )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    s = cfg.input_scale
    W_enc, b_enc = sae.W_enc * s, sae.b_enc.clone()
    W_dec, b_dec = sae.W_dec / s, sae.b_dec / s
    if cfg.arch == "relu":
        norms = sae.W_dec.norm(dim=-1)
        W_enc, b_enc = W_enc * norms, b_enc * norms  # all-zero rows get a zero encoder too
        W_dec = W_dec / norms.clamp_min(torch.finfo(norms.dtype).tiny)[:, None]
    tensors = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}
    if isinstance(sae, JumpReLUSAE):
        tensors["threshold"] = sae.threshold
    elif cfg.arch == "batchtopk":
        threshold = cfg.batchtopk_threshold
        if threshold is None:
            raise ValueError("this batchtopk SAE has no inference threshold yet: train it first")
        tensors["threshold"] = torch.full_like(b_enc, threshold)
    architecture = _EXPORT_ARCH[cfg.arch]
    doc: dict[str, Any] = {
        "architecture": architecture,
        "d_in": cfg.d_in,
        "d_sae": cfg.n_features,
        "dtype": dtype_name(sae.W_enc.dtype),
        "device": "cpu",
        "model_name": cfg.model,
        "hook_name": cfg.site,
        "hook_layer": _layer(cfg.site),
        "hook_head_index": None,
        "activation_fn_str": "topk" if architecture == "topk" else "relu",
        "activation_fn_kwargs": {"k": cfg.k} if architecture == "topk" else {},
        "apply_b_dec_to_input": bool(cfg.subtract_b_dec_in_encoder),
        "finetuning_scaling_factor": False,
        "normalize_activations": "none",
        "context_size": None,
        "prepend_bos": True,  # monoscope contexts start with BOS
        "dataset_path": None,
        "model_from_pretrained_kwargs": {},
        "sae_lens_training_version": None,
        "neuronpedia_id": None,
        "monoscope": {
            "format": SAE_FORMAT,
            "version": SAE_FORMAT_VERSION,
            "arch": cfg.arch,
            "input_scale": s,
            "config": cfg.to_json(),  # what the import restores (batchtopk, training record)
        },
    }
    if architecture == "topk":
        doc["k"] = cfg.k  # SAELens 6 reads k here; older versions from activation_fn_kwargs
    weights = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    # No checksums.json: SAELens and scripts rewrite these files without knowing of one, and
    # a stale one would then read as damage.
    atomic_write_bytes(folder / WEIGHTS_FILE, save_bytes(weights))
    atomic_write_json(folder / CFG_FILE, doc)
    return folder


def load_saelens(folder: str | Path, verify: bool | None = None) -> SparseAutoencoder:
    """Read an SAELens SAE (standard, topk or jumprelu) as a monoscope SAE. SAELens records
    no checksums: `verify` is accepted for `load_sae`'s sake, and there is nothing to check.

    Reconstructions are SAELens'. encode() is too, except that a "standard" SAE reports
    f_i ||W_dec_i|| (Scaling Monosemanticity's convention), which is SAELens' f when decoder rows
    have unit norm, as in SAEs exported by monoscope.
    """
    folder = Path(folder)
    source = str(folder / CFG_FILE)
    raw = read_config(folder / CFG_FILE)
    meta = raw.get("meta") or {}  # SAELens 6 nests hook and model fields under "meta"

    def get(key: str, default: Any = None) -> Any:
        return raw[key] if key in raw else meta.get(key, default)

    architecture = raw.get("architecture", "standard")
    activation = raw.get("activation_fn") or raw.get("activation_fn_str") or "relu"
    if architecture == "standard" and activation == "topk":
        architecture = "topk"  # SAELens < 6 marked TopK SAEs by their activation function
    elif architecture == "standard" and activation != "relu":
        raise SAEFormatError(f"{source}: activation function {activation!r} is not supported")
    if architecture not in _IMPORT_ARCH:
        raise SAEFormatError(
            f"{source}: SAELens architecture {architecture!r} is not supported "
            f"(supported: {', '.join(_IMPORT_ARCH)})"
        )
    if raw.get("normalize_activations") not in (None, "none", False):
        raise SAEFormatError(
            f"{source}: normalize_activations={raw['normalize_activations']!r} is not supported; "
            "fold the normalisation into the weights first (SAELens: "
            "fold_activation_norm_scaling_factor)"
        )
    if raw.get("rescale_acts_by_decoder_norm"):
        raise SAEFormatError(f"{source}: rescale_acts_by_decoder_norm is not supported")
    arch = _IMPORT_ARCH[architecture]
    k = None
    if arch == "topk":
        k = raw.get("k") or (raw.get("activation_fn_kwargs") or {}).get("k")
        if k is None:
            raise SAEFormatError(f"{source}: a topk SAE without k")

    path = folder / WEIGHTS_FILE
    tensors = {key: t.float() for key, t in read_tensors(path).items()}
    _reject_scaling_factor(tensors, str(path))
    ours = raw.get("monoscope") or {}
    s = float(ours.get("input_scale", 1.0))
    try:
        cfg = SAEConfig(
            arch=arch,
            d_in=raw.get("d_in"),
            n_features=raw.get("d_sae"),
            k=k,
            input_scale=s,
            site=get("hook_name") or raw.get("hook_point"),  # hook_point: SAELens < 3
            model=get("model_name"),
            subtract_b_dec_in_encoder=bool(raw.get("apply_b_dec_to_input", True)),
            training={"imported_from": "saelens", "source_config": raw},
        )
    except ValueError as err:
        raise SAEFormatError(f"{source}: {err}") from err
    weights = _unfold_scale(tensors, s, str(path))
    if arch == "jumprelu":
        weights["log_threshold"] = _log_threshold(tensors, str(path))
    cfg = _exported_config(ours.get("config"), cfg, tensors) or cfg
    if cfg.arch == "batchtopk":
        del weights["log_threshold"]
    sae = empty_sae(cfg)
    sae.load_weights(weights, str(path))
    return sae


def _exported_config(
    exported: dict | None, imported: SAEConfig, tensors: dict[str, Tensor]
) -> SAEConfig | None:
    """The monoscope config an export carried, when the file still matches it: a batchtopk
    SAE (exported as jumprelu with one threshold everywhere) comes back as batchtopk, and the
    training record is kept. None when there is none or the weights no longer fit it."""
    if not exported:
        return None
    try:
        cfg = SAEConfig.from_json(exported)
    except (TypeError, ValueError):
        return None
    same_shape = (cfg.d_in, cfg.n_features) == (imported.d_in, imported.n_features)
    if not same_shape or _EXPORT_ARCH[cfg.arch] != _EXPORT_ARCH[imported.arch]:
        return None
    if cfg.arch == "topk" and cfg.k != imported.k:
        return None
    if cfg.arch == "batchtopk":
        threshold = tensors["threshold"]
        if not bool((threshold == threshold[0]).all()):
            return None
        exact = cfg.batchtopk_threshold  # the file holds it rounded to its dtype
        if exact is None or float(torch.tensor(exact, dtype=threshold.dtype)) != threshold[0]:
            cfg.batchtopk_threshold = float(threshold[0])
    cfg.input_scale = imported.input_scale
    cfg.site, cfg.model = imported.site, imported.model
    cfg.training = {**cfg.training, "imported_from": "saelens"}
    return cfg


def _unfold_scale(tensors: dict[str, Tensor], s: float, source: str) -> dict[str, Tensor]:
    """SAELens weights (raw units) -> monoscope's, for input_scale s."""
    missing = [k for k in ("W_enc", "b_enc", "W_dec", "b_dec") if k not in tensors]
    if missing:
        raise SAEFormatError(f"{source}: missing tensors {missing}; it has {sorted(tensors)}")
    return {
        "W_enc": tensors["W_enc"] / s,
        "b_enc": tensors["b_enc"],
        "W_dec": tensors["W_dec"] * s,
        "b_dec": tensors["b_dec"] * s,
    }


def _log_threshold(tensors: dict[str, Tensor], source: str) -> Tensor:
    if "log_threshold" in tensors:
        return tensors["log_threshold"]
    if "threshold" not in tensors:
        raise SAEFormatError(f"{source}: a jumprelu SAE without threshold")
    threshold = tensors["threshold"]
    if bool((threshold < 0).any()):
        raise SAEFormatError(f"{source}: negative JumpReLU thresholds are not supported")
    return threshold.log()


def _reject_scaling_factor(tensors: dict[str, Tensor], source: str) -> None:
    # Old SAELens files may carry a per-latent output scale; all ones means none.
    for key in ("scaling_factor", "finetuning_scaling_factor"):
        if key in tensors and not bool((tensors.pop(key) == 1).all()):
            raise SAEFormatError(f"{source}: a fine-tuned {key} is not supported")


def _layer(site: str | None) -> int | None:
    match = re.match(r"blocks\.(\d+)\.", site or "")
    return int(match.group(1)) if match else None
