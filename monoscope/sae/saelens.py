"""SAELens interop: cfg.json + sae_weights.safetensors, as `SAE.load_from_disk` reads them.

SAELens applies its `normalize_activations` to the raw input, then
`(x - b_dec * apply_b_dec_to_input) @ W_enc + b_enc`, its activation, then `f @ W_dec + b_dec`,
and maps that back by the normalisation. What the import does with each cfg.json option:

- architecture: standard -> relu, topk -> topk, jumprelu -> jumprelu, gated -> gated
  (gated.py; b_gate is our b_enc), batchtopk and matryoshka_batchtopk (training checkpoints;
  their nested widths only shape the training loss) -> batchtopk with the checkpoint's
  `topk_threshold` as inference threshold. SAELens' inference files of those two are jumprelu.
- rescale_acts_by_decoder_norm (topk, batchtopk): the pre-activations are multiplied by the
  decoder norms n_i and the codes divided by them before decoding; folded exactly:
  W_enc' = W_enc n, b_enc' = b_enc n, W_dec' = W_dec / n.
- normalize_activations: 'none'; 'expected_average_only_in' with its scaling factor s
  (the checkpoint's activation_scaler.json, or "norm_scaling_factor" in cfg.json) -> our
  input_scale s; 'constant_norm_rescale' and 'layer_norm' -> our per-token input_norm
  (normalization.py); 'covariance_whitening' (a checkpoint, with its
  activation_whitening.safetensors): folded into the weights, as SAELens folds it at the end.
- apply_b_dec_to_input -> subtract_b_dec_in_encoder; hook_name (hook_point before SAELens 3)
  -> site (SAELens' names are TransformerLens', as ours); metadata.model_name -> model.
- dtype: the weights are rounded to it, as SAELens loads them, and held in float32 (float64
  stays float64).
- JumpReLU thresholds <= 0 are a threshold of 0 (SAELens ReLUs before the jump).

Refused, naming the option: transcoders whose output is wider or narrower than their input or
that normalise it, other architectures, 'covariance_whitening' without its statistics, a
non-integer batchtopk k, a fine-tuned scaling_factor, 'expected_average_only_in' without its
factor, unexpected tensors.

Exports fold what SAELens has no field for into the weights, so raw-unit reconstructions and
encode() are unchanged:

- input_scale s: W_enc' = s W_enc, W_dec' = W_dec / s, b_dec' = b_dec / s (pre-activations and
  thresholds unchanged: (x - b_dec/s) (s W_enc) = (s x - b_dec) W_enc);
- relu ("standard", which reports f itself): the decoder norms n_i, W_enc'[:, i] = n_i W_enc[:, i],
  b_enc'[i] = n_i b_enc[i], W_dec'[i] = W_dec[i] / n_i, so SAELens' f' = f_i n_i, our reporting;
- batchtopk: exported as "jumprelu" with its learned threshold for every latent, which is exactly
  its inference rule; input_norm: as normalize_activations.

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
from monoscope.sae.files import (
    FORMAT_FILES,
    LISTED,
    SAEFormatError,
    describe_held,
    formats_in,
    read_config,
    read_tensors,
    sae_folders_in,
)
from monoscope.sae.gated import GatedSAE
from monoscope.sae.jumprelu import JumpReLUSAE
from monoscope.sae.saelens_options import SAELensOptions, read_options

CFG_FILE, WEIGHTS_FILE = FORMAT_FILES["saelens"]

_EXPORT_ARCH = {
    "relu": "standard",
    "topk": "topk",
    "batchtopk": "jumprelu",
    "jumprelu": "jumprelu",
    "gated": "gated",
}


@torch.no_grad()
def export_saelens(sae: SparseAutoencoder, folder: str | Path) -> Path:
    """Write `sae` to folder/cfg.json + folder/sae_weights.safetensors for SAELens."""
    _export_architecture(sae.cfg)  # refuses what SAELens cannot hold before writing
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = _export_tensors(sae)
    weights = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    # No checksums.json: SAELens and scripts rewrite these files without knowing of one, and
    # a stale one would then read as damage.
    atomic_write_bytes(folder / WEIGHTS_FILE, save_bytes(weights))
    atomic_write_json(folder / CFG_FILE, _export_config(sae))
    return folder


def _export_architecture(cfg: SAEConfig) -> str:
    """SAELens' architecture for `cfg`; a ValueError naming what SAELens has no form for."""
    if cfg.arch not in _EXPORT_ARCH:
        raise ValueError(
            f"a {cfg.arch!r} dictionary is not an SAE SAELens loads (monoscope's own format "
            "keeps it: --to monoscope)"
        )
    architecture = _EXPORT_ARCH[cfg.arch]
    if not (cfg.transcoder or cfg.skip_connection):
        return architecture
    # SAELens' transcoders (with or without a skip term) never subtract b_dec from their input
    # and do not map their output back through an input normalisation.
    if architecture not in ("standard", "jumprelu") or cfg.arch == "batchtopk":
        raise ValueError(f"SAELens has no {cfg.arch} transcoder or skip connection")
    if cfg.subtract_b_dec_in_encoder or cfg.input_norm != "none":
        raise ValueError(
            "SAELens' transcoders read their input as it is: this one subtracts b_dec or "
            "normalises its input (monoscope's own format keeps it: --to monoscope)"
        )
    prefix = "" if architecture == "standard" else "jumprelu_"
    return prefix + ("skip_transcoder" if cfg.skip_connection else "transcoder")


def _export_tensors(sae: SparseAutoencoder) -> dict[str, Tensor]:
    """SAELens' tensors of `sae`: raw-unit weights (input_scale folded), relu's decoder norms
    folded into its encoder, thresholds as SAELens' `threshold`, b_gate for a gated SAE."""
    cfg, s = sae.cfg, sae.cfg.input_scale
    W_enc, b_enc = sae.W_enc * s, sae.b_enc.clone()
    W_dec, b_dec = sae.W_dec / s, sae.b_dec / s
    if cfg.arch == "relu":
        norms = sae.W_dec.norm(dim=-1)
        W_enc, b_enc = W_enc * norms, b_enc * norms  # all-zero rows get a zero encoder too
        W_dec = W_dec / norms.clamp_min(torch.finfo(norms.dtype).tiny)[:, None]
    tensors = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}
    if isinstance(sae, JumpReLUSAE):
        tensors["threshold"] = sae.threshold
    elif isinstance(sae, GatedSAE):
        tensors["b_gate"] = tensors.pop("b_enc")
        tensors.update(r_mag=sae.r_mag, b_mag=sae.b_mag)
    if cfg.skip_connection:
        tensors["W_skip"] = sae.W_skip
    if cfg.arch == "batchtopk":
        threshold = cfg.batchtopk_threshold
        if threshold is None:
            raise ValueError("this batchtopk SAE has no inference threshold yet: train it first")
        tensors["threshold"] = torch.full_like(b_enc, threshold)
    return tensors


def _export_config(sae: SparseAutoencoder) -> dict[str, Any]:
    cfg = sae.cfg
    architecture = _export_architecture(cfg)
    doc: dict[str, Any] = {
        "architecture": architecture,
        "d_in": cfg.d_in,
        "d_sae": cfg.n_features,
        "dtype": dtype_name(sae.W_enc.dtype),
        "device": "cpu",
        "model_name": cfg.model,
        "hook_head_index": None,
        "activation_fn_str": "topk" if architecture == "topk" else "relu",
        "activation_fn_kwargs": {"k": cfg.k} if architecture == "topk" else {},
        "apply_b_dec_to_input": bool(cfg.subtract_b_dec_in_encoder),
        "finetuning_scaling_factor": False,
        "normalize_activations": cfg.input_norm,
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
            "input_scale": cfg.input_scale,
            "config": cfg.to_json(),  # what the import restores (batchtopk, training record)
        },
    }
    if cfg.site is not None:  # SAELens 6 cannot read a null hook_name
        doc.update(hook_name=cfg.site, hook_layer=_layer(cfg.site))
    if architecture == "topk":
        doc["k"] = cfg.k  # SAELens 6 reads k here; older versions from activation_fn_kwargs
    if "transcoder" in architecture:
        doc.update(d_out=cfg.d_in, hook_name_out=cfg.output_site or cfg.site)
    return doc


def load_saelens(folder: str | Path, verify: bool | None = None) -> SparseAutoencoder:
    """Read an SAELens SAE (see the module docstring for the options) as a monoscope SAE.
    SAELens records no checksums: `verify` is accepted for `load_sae`'s sake, and there is
    nothing to check.

    Reconstructions are SAELens'. encode() is too, except that a "standard" SAE reports
    f_i ||W_dec_i|| (Scaling Monosemanticity's convention), which is SAELens' f when decoder rows
    have unit norm, as in SAEs exported by monoscope.
    """
    folder = Path(folder)
    options = read_options(folder, read_config(folder / CFG_FILE))
    path = folder / WEIGHTS_FILE
    tensors = _weights_in_units(read_tensors(path), options, str(path))
    try:
        cfg = options.config()
    except ValueError as err:
        raise SAEFormatError(f"{folder / CFG_FILE}: {err}") from err
    cfg = _exported_config(options.exported, cfg, tensors) or cfg
    if cfg.arch == "batchtopk" and cfg.batchtopk_threshold is None:
        cfg.batchtopk_threshold = _batchtopk_threshold(tensors, str(path))
    weights = _monoscope_weights(cfg, options, tensors, str(path))
    sae = empty_sae(cfg)
    if options.float64:
        sae = sae.double()  # a float64 SAE keeps its precision
    sae.load_weights(weights, str(path))
    return sae


def _weights_in_units(
    tensors: dict[str, Tensor], options: SAELensOptions, source: str
) -> dict[str, Tensor]:
    """SAELens' tensors as SAELens holds them (rounded to the cfg's dtype), in our working
    precision, with what SAELens does not load (an all-ones scaling_factor) dropped."""
    out: dict[str, Tensor] = {}
    for key, t in tensors.items():
        if key in ("scaling_factor", "finetuning_scaling_factor"):
            # Old SAELens files may carry a per-latent output scale; all ones means none.
            if not bool((t == 1).all()):
                raise SAEFormatError(f"{source}: a fine-tuned {key} is not supported")
            continue
        out[key] = t.to(options.dtype).to(options.working_dtype)
    missing = [k for k in ("W_enc", "W_dec", "b_dec") if k not in out]
    if missing:
        raise SAEFormatError(f"{source}: missing tensors {missing}; it has {sorted(out)}")
    return out


def _monoscope_weights(
    cfg: SAEConfig, options: SAELensOptions, tensors: dict[str, Tensor], source: str
) -> dict[str, Tensor]:
    """SAELens tensors -> our parameters for `cfg`: decoder norms folded where SAELens
    rescales by them, then a checkpoint's whitening, the export's input_scale unfolded,
    thresholds and gates renamed."""
    t = dict(tensors)
    if "b_gate" in t:
        t["b_enc"] = t.pop("b_gate")
    if "b_enc" not in t:
        raise SAEFormatError(f"{source}: missing tensor b_enc; it has {sorted(tensors)}")
    if options.rescale_by_decoder_norm:
        norms = t["W_dec"].norm(dim=-1)
        t["W_enc"], t["b_enc"] = t["W_enc"] * norms, t["b_enc"] * norms
        t["W_dec"] = t["W_dec"] / norms.clamp_min(torch.finfo(norms.dtype).tiny)[:, None]
    if options.whitening is not None:
        _fold_whitening(t, options.whitening, options.subtract_b_dec)
    s = options.folded_scale
    weights = {
        "W_enc": t["W_enc"] / s,
        "b_enc": t["b_enc"],
        "W_dec": t["W_dec"] * s,
        "b_dec": t["b_dec"] * s,
    }
    if cfg.arch == "jumprelu":
        weights["log_threshold"] = _log_threshold(t, source)
    elif cfg.arch == "gated":
        weights.update(r_mag=_need(t, "r_mag", source), b_mag=_need(t, "b_mag", source))
    if cfg.skip_connection:
        weights["W_skip"] = _need(t, "W_skip", source)  # raw units both sides
    # A batchtopk's threshold is in its config; jumprelu's under either name.
    read = {*weights, "b_gate", "threshold", "log_threshold", "topk_threshold"}
    unexpected = sorted(set(tensors) - read)
    if unexpected:
        raise SAEFormatError(f"{source}: unexpected tensors {unexpected} for a {cfg.arch} SAE")
    return weights


def _fold_whitening(t: dict[str, Tensor], stats: dict[str, Tensor], subtract_b_dec: bool) -> None:
    """Fold a checkpoint's whitening z = (x - μ) M, x = z M⁻¹ + μ into its (decoder-norm
    folded) tensors `t`, in place, in float64: the encoder reads M W_enc, the decoder writes
    W_dec M⁻¹ and b_dec M⁻¹ + μ. Where b_dec is subtracted first, b_dec' already removes μ;
    otherwise each encoder bias loses μ M W_enc (scaled by exp(r_mag) on a gated magnitude
    path). Thresholds are untouched: the pre-activations are the same."""
    mean, matrix, inverse = stats["mean"], stats["matrix"], stats["inverse_matrix"]
    dtype = t["W_enc"].dtype
    W_enc = matrix @ t["W_enc"].double()
    if not subtract_b_dec:
        shift = mean @ W_enc
        t["b_enc"] = (t["b_enc"].double() - shift).to(dtype)  # a gated SAE's b_gate
        if "b_mag" in t:
            t["b_mag"] = (t["b_mag"].double() - shift * t["r_mag"].double().exp()).to(dtype)
    t["W_enc"] = W_enc.to(dtype)
    t["W_dec"] = (t["W_dec"].double() @ inverse).to(dtype)
    t["b_dec"] = (t["b_dec"].double() @ inverse + mean).to(dtype)


def _need(tensors: dict[str, Tensor], key: str, source: str) -> Tensor:
    if key not in tensors:
        raise SAEFormatError(f"{source}: missing tensor {key}; it has {sorted(tensors)}")
    return tensors[key]


def _batchtopk_threshold(tensors: dict[str, Tensor], source: str) -> float:
    """The inference threshold of a SAELens batchtopk checkpoint (its `topk_threshold`, in
    the units of the decoder-norm-rescaled pre-activations, as folded)."""
    threshold = _need(tensors, "topk_threshold", source)
    return max(0.0, float(threshold))


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
    same_inputs = cfg.input_norm == imported.input_norm
    if not (same_shape and same_inputs) or cfg.arch not in _EXPORT_ARCH:
        return None
    if _EXPORT_ARCH[cfg.arch] != _EXPORT_ARCH.get(imported.arch):
        return None
    if cfg.arch == "topk" and cfg.k != imported.k:
        return None
    if cfg.arch == "batchtopk":
        threshold = tensors.get("threshold")
        if threshold is None or not bool((threshold == threshold[0]).all()):
            return None
        exact = cfg.batchtopk_threshold  # the file holds it rounded to its dtype
        if exact is None or float(torch.tensor(exact, dtype=threshold.dtype)) != threshold[0]:
            cfg.batchtopk_threshold = max(0.0, float(threshold[0]))
    cfg.input_scale = imported.input_scale
    cfg.site, cfg.model = imported.site, imported.model
    cfg.subtract_b_dec_in_encoder = imported.subtract_b_dec_in_encoder
    cfg.training = {**cfg.training, "imported_from": "saelens"}
    return cfg


def _log_threshold(tensors: dict[str, Tensor], source: str) -> Tensor:
    """log θ per latent. SAELens computes ReLU(pre) * (pre > θ): a threshold <= 0 acts as 0,
    whose log is -inf (exp(-inf) = 0 exactly)."""
    if "log_threshold" in tensors:
        return tensors["log_threshold"]
    return _need(tensors, "threshold", source).clamp_min(0).log()


def describe_release(folder: Path) -> str | None:
    """'holds 3 SAELens SAEs in subfolders: layer_3/width_16k (blocks.3.hook_resid_post), ...':
    the SAE ids of a downloaded SAELens release (one folder per id, as its
    pretrained_saes.yaml lists them) with their hooks; None when `folder` holds none below it."""
    held = [p for p in sae_folders_in(folder) if formats_in(p) == ["saelens"]]
    if not held:
        return None
    notes = []
    for sub in held[:LISTED]:
        try:
            raw = read_config(sub / CFG_FILE)
        except SAEFormatError:
            notes.append("unreadable cfg.json")  # listed anyway; loading it names the damage
            continue
        meta = raw.get("metadata") or {}
        notes.append(str(raw.get("hook_name") or meta.get("hook_name") or "no hook_name"))
    notes += [""] * (len(held) - len(notes))
    return "holds " + describe_held(held, folder, notes, kind="SAELens")


def _layer(site: str | None) -> int | None:
    match = re.match(r"blocks\.(\d+)\.", site or "")
    return int(match.group(1)) if match else None
