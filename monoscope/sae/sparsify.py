"""EleutherAI sparsify interop: cfg.json + sae.safetensors, read and written.

sparsify's SparseCoder (1.3) computes, on raw activations x [..., d_in]:

    pre = ReLU(encoder.weight @ (x - b_dec) + encoder.bias)      (x itself for a transcoder)
    acts = the k largest of pre (activation "topk"), or the largest of each of k contiguous
           groups of num_latents / k ("groupmax")
    y = Σ acts W_dec[idx] + b_dec  (+ W_skip @ x with skip_connection)

Each option has an exact monoscope meaning:
- activation topk / groupmax: arch topk / groupmax (groupmax.py), with the same k;
- skip_connection: `SAEConfig.skip_connection`, the W_skip term of the reconstruction;
- transcode: `SAEConfig.transcoder`; b_dec is the output's bias and is not subtracted from
  the input; the input is read at `site` (the hookpoint module's input), y predicts its output
  (`output_site`);
- multi_topk: a training loss (the top 4k latents' reconstruction scored too). encode/decode
  are the top k's; only sparsify's forward() returns the 4k reconstruction for such a coder;
- normalize_decoder: keeps decoder rows at unit norm while training; nothing at inference.

A checkpoint folder holds one SAE folder per hookpoint, named by the hookpoint (a module path
below the model's base model: `layers.15`, `layers.3.mlp`; `<hookpoint>/seed<N>` when several
seeds were trained), beside the run's `config.json`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as save_bytes

from monoscope.artifacts import atomic_write_bytes, atomic_write_json
from monoscope.models.site_tables import FAMILIES
from monoscope.sae.base import SparseAutoencoder
from monoscope.sae.build import empty_sae
from monoscope.sae.config import SAEConfig
from monoscope.sae.files import FORMAT_FILES, SAEFormatError, read_config, read_tensors

CFG_FILE, WEIGHTS_FILE = FORMAT_FILES["sparsify"]
RUN_CONFIG = "config.json"
"""The run's settings (model, hookpoints) that sparsify writes beside the hookpoint folders."""

# sparsify's SparseCoderConfig fields with their defaults (d_in: written by save_to_disk).
_DEFAULTS: dict[str, Any] = {
    "activation": "topk",
    "expansion_factor": 32,
    "normalize_decoder": True,
    "num_latents": 0,
    "k": 32,
    "multi_topk": False,
    "skip_connection": False,
    "transcode": False,
    "d_in": None,
}
_FLAGS = ("normalize_decoder", "multi_topk", "skip_connection", "transcode")
_ACTIVATIONS = ("topk", "groupmax")
_SEED_FOLDER = re.compile(r"seed\d+")


def load_sparsify(folder: str | Path, verify: bool | None = None) -> SparseAutoencoder:
    """Read a sparsify SAE or transcoder; encode and reconstruction are sparsify's own.
    sparsify records no checksums: `verify` is accepted for `load_sae`'s sake, and there is
    nothing to check."""
    folder = Path(folder)
    source = str(folder / CFG_FILE)
    options = _options(read_config(folder / CFG_FILE), source)
    path = folder / WEIGHTS_FILE
    tensors = {key: t.float() for key, t in read_tensors(path).items()}
    expected = ["encoder.weight", "encoder.bias", "W_dec", "b_dec"]
    expected += ["W_skip"] if options["skip_connection"] else []
    missing = [k for k in expected if k not in tensors]
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise SAEFormatError(
            f"{path}: this sparsify SAE ({_describe(options)}) has tensors {expected}; "
            f"missing {missing}, unexpected {extra}"
        )
    cfg = _config(options, tuple(tensors["encoder.weight"].shape), folder, source)
    sae = empty_sae(cfg)
    weights = {
        "W_enc": tensors["encoder.weight"].t(),
        "b_enc": tensors["encoder.bias"],
        "W_dec": tensors["W_dec"],
        "b_dec": tensors["b_dec"],
    }
    if options["skip_connection"]:
        weights["W_skip"] = tensors["W_skip"]
    sae.load_weights(weights, str(path))
    return sae


def _options(raw: dict[str, Any], source: str) -> dict[str, Any]:
    """sparsify's config with its defaults filled in; an option without an exact meaning here
    (an unknown one that is set, a value of the wrong kind) is refused by name."""
    unknown = sorted(key for key, value in raw.items() if key not in _DEFAULTS and value)
    if unknown:
        settings = ", ".join(f"{key}={raw[key]!r}" for key in unknown)
        raise SAEFormatError(
            f"{source}: sparsify option(s) {settings} unknown to monoscope: their meaning is "
            "not known, so the SAE cannot be read exactly"
        )
    options = {key: raw.get(key, default) for key, default in _DEFAULTS.items()}
    for flag in _FLAGS:
        if not isinstance(options[flag], bool):
            raise SAEFormatError(f"{source}: {flag} must be true or false, not {options[flag]!r}")
    if options["activation"] not in _ACTIVATIONS:
        raise SAEFormatError(
            f"{source}: activation {options['activation']!r} is not supported "
            f"(sparsify's are {' and '.join(_ACTIVATIONS)})"
        )
    return options


def _describe(options: dict[str, Any]) -> str:
    on = [flag for flag in ("skip_connection", "transcode") if options[flag]]
    return ", ".join([str(options["activation"]), *on])


def _config(
    options: dict[str, Any], encoder_shape: tuple[int, ...], folder: Path, source: str
) -> SAEConfig:
    """The monoscope config of a sparsify SAE whose encoder.weight is [num_latents, d_in]."""
    n_latents, width = encoder_shape if len(encoder_shape) == 2 else (0, 0)
    d_in = options["d_in"] or width  # older sparsify configs do not record d_in
    n_features = options["num_latents"] or d_in * options["expansion_factor"]
    if (n_features, d_in) != (n_latents, width):
        raise SAEFormatError(
            f"{folder / WEIGHTS_FILE}: encoder.weight has shape {list(encoder_shape)}, "
            f"expected [{n_features}, {d_in}] (num_latents, d_in of {CFG_FILE})"
        )
    hookpoint = hookpoint_of(folder)
    transcode = options["transcode"]
    input_site, output_site = hookpoint_sites(hookpoint)
    try:
        return SAEConfig(
            arch=options["activation"],
            d_in=d_in,
            n_features=n_features,
            k=options["k"],
            site=input_site if transcode else output_site,
            model=_run_model(folder),
            subtract_b_dec_in_encoder=not transcode,
            skip_connection=options["skip_connection"],
            transcoder=transcode,
            output_site=output_site if transcode else None,
            training={
                "imported_from": "sparsify",
                "hookpoint": hookpoint,
                "source_config": options,
            },
        )
    except ValueError as err:
        raise SAEFormatError(f"{source}: {err}") from err


def hookpoint_of(folder: Path) -> str:
    """The hookpoint an SAE folder of a sparsify checkpoint is named by: its own name, or its
    parent's for a `seed<N>` folder."""
    folder = folder.resolve()
    return folder.parent.name if _SEED_FOLDER.fullmatch(folder.name) else folder.name


def _run_model(folder: Path) -> str | None:
    """The model in the run's config.json beside the hookpoint folders, if there is one."""
    run = folder.resolve().parent
    if _SEED_FOLDER.fullmatch(folder.resolve().name):
        run = run.parent
    try:
        raw = read_config(run / RUN_CONFIG)
    except (OSError, SAEFormatError):
        return None  # a lone SAE folder, or another program's config.json: no model known
    model = raw.get("model") if "hookpoints" in raw and "sae" in raw else None
    return model if isinstance(model, str) else None


def hookpoint_sites(hookpoint: str) -> tuple[str | None, str | None]:
    """(site of the module's input, site of its output) for a sparsify hookpoint, a module path
    below the model's base model (`layers.15` in a Llama, `h.15` in GPT-2); None where no
    monoscope site is exactly that tensor in every family the path fits."""
    found: dict[str, set[str]] = {"input": set(), "output": set()}
    for family in FAMILIES.values():
        layers = family.layers.partition(".")[2]  # model.layers -> layers: below the base model
        match = re.fullmatch(re.escape(layers) + r"\.(\d+)(?:\.(.+))?", hookpoint)
        if match is None:
            continue
        layer, module = match.group(1), match.group(2) or ""
        for kind, rule in family.rules.items():
            if rule.module == module:
                found[rule.where].add(f"blocks.{layer}.{kind}")
    input_site, output_site = (
        next(iter(sites)) if len(sites) == 1 else None for sites in found.values()
    )
    return input_site, output_site


def checkpoint_saes(folder: Path) -> list[str]:
    """The sparsify SAE folders below a checkpoint folder, relative to it ('layers.15',
    'layers.15/seed0'), in natural order; empty when `folder` is not such a checkpoint."""
    found = []
    for child in folder.iterdir():
        if not child.is_dir():
            continue
        if _is_sparsify(child):
            found.append(child.name)
        else:
            seeds = [p for p in child.iterdir() if p.is_dir() and _SEED_FOLDER.fullmatch(p.name)]
            found += [f"{child.name}/{p.name}" for p in seeds if _is_sparsify(p)]
    return sorted(found, key=_natural)


def describe_checkpoint(folder: Path, shown: int = 12) -> str | None:
    """'holds N sparsify SAEs: layers.3 (blocks.3.hook_resid_post), layers.3.mlp (transcoder
    -> blocks.3.hook_mlp_out), ...', or None when `folder` holds none below it."""
    names = checkpoint_saes(folder)
    if not names:
        return None
    parts = []
    for name in names[:shown]:
        transcode = bool(_read_flag(folder / name, "transcode"))
        input_site, output_site = hookpoint_sites(hookpoint_of(folder / name))
        if transcode:
            parts.append(f"{name} (transcoder {input_site or '?'} -> {output_site or '?'})")
        else:
            parts.append(f"{name} ({output_site or 'no monoscope site'})")
    more = f", and {len(names) - shown} more" if len(names) > shown else ""
    return f"holds {len(names)} sparsify SAEs: {', '.join(parts)}{more}"


def _is_sparsify(folder: Path) -> bool:
    return all((folder / name).is_file() for name in (CFG_FILE, WEIGHTS_FILE))


def _read_flag(folder: Path, key: str) -> Any:
    try:
        return read_config(folder / CFG_FILE).get(key)
    except SAEFormatError:
        return None  # listed anyway; loading it names the damage


def _natural(name: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


@torch.no_grad()
def export_sparsify(sae: SparseAutoencoder, folder: str | Path) -> Path:
    """Write a topk or groupmax SAE (or transcoder) to folder/cfg.json + folder/sae.safetensors,
    as sparsify's `SparseCoder.load_from_disk` reads them: raw-unit weights (input_scale folded
    in), b_dec moved into the encoder bias where sparsify's convention differs from ours."""
    cfg = sae.cfg
    if cfg.arch not in _ACTIVATIONS:
        raise ValueError(
            f"sparsify SAEs are {' or '.join(_ACTIVATIONS)}; a {cfg.arch!r} SAE has no sparsify "
            "equivalent: convert it --to saelens or --to monoscope"
        )
    s = cfg.input_scale
    W_enc, b_dec = sae.W_enc * s, sae.b_dec / s  # (s x - b_dec) W_enc = (x - b_dec / s) s W_enc
    b_enc = sae.b_enc.clone()
    if cfg.subtract_b_dec_in_encoder and cfg.transcoder:
        b_enc -= b_dec @ W_enc  # sparsify does not subtract it: subtract it in the bias
    elif not cfg.subtract_b_dec_in_encoder and not cfg.transcoder:
        b_enc += b_dec @ W_enc  # sparsify subtracts it: add it back in the bias
    tensors = {"encoder.weight": W_enc.t(), "encoder.bias": b_enc, "W_dec": sae.W_dec / s}
    tensors["b_dec"] = b_dec
    if cfg.skip_connection:
        tensors["W_skip"] = sae.W_skip
    norms = tensors["W_dec"].norm(dim=-1)
    # Settings that only steer training are kept from a sparsify import, else inferred.
    imported = cfg.training.get("imported_from") == "sparsify"
    source = (cfg.training.get("source_config") or {}) if imported else {}
    doc = {
        "activation": cfg.arch,
        "expansion_factor": source.get("expansion_factor", cfg.n_features // cfg.d_in),
        "normalize_decoder": source.get(
            "normalize_decoder", bool(torch.allclose(norms, torch.ones_like(norms), atol=1e-5))
        ),
        "num_latents": cfg.n_features,
        "k": cfg.k,
        "multi_topk": source.get("multi_topk", False),
        "skip_connection": cfg.skip_connection,
        "transcode": cfg.transcoder,
        "d_in": cfg.d_in,
    }
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    # No checksums.json, as for SAELens exports: sparsify rewrites these files without one.
    atomic_write_bytes(folder / WEIGHTS_FILE, save_bytes(weights))
    atomic_write_json(folder / CFG_FILE, doc)
    return folder
