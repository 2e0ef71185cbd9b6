"""EleutherAI sparsify interop (import): cfg.json + sae.safetensors.

A sparsify SAE encodes top-k of ReLU(encoder(x - b_dec)) and decodes Σ top_acts W_dec[top_idx]
+ b_dec: a TopK SAE with b_dec subtracted at the input, in raw units. Its tensors:
encoder.weight [num_latents, d_in], encoder.bias [num_latents], W_dec [num_latents, d_in],
b_dec [d_in].
"""

from __future__ import annotations

from pathlib import Path

from monoscope.sae.base import SparseAutoencoder
from monoscope.sae.build import empty_sae
from monoscope.sae.config import SAEConfig
from monoscope.sae.files import FORMAT_FILES, SAEFormatError, read_config, read_tensors

CFG_FILE, WEIGHTS_FILE = FORMAT_FILES["sparsify"]

# Options that change what the SAE computes, which a plain TopK SAE cannot represent.
_UNSUPPORTED = {
    "skip_connection": "a linear skip connection",
    "transcode": "a transcoder (it predicts another site's output)",
}


def load_sparsify(folder: str | Path, verify: bool | None = None) -> SparseAutoencoder:
    """Read a sparsify SAE as a monoscope topk SAE (identical encode and reconstruction).
    sparsify records no checksums: `verify` is accepted for `load_sae`'s sake, and there is
    nothing to check."""
    folder = Path(folder)
    source = str(folder / CFG_FILE)
    raw = read_config(folder / CFG_FILE)
    for option, what in _UNSUPPORTED.items():
        if raw.get(option):
            raise SAEFormatError(f"{source}: {option}=true ({what}) is not supported")
    if raw.get("activation", "topk") != "topk":
        raise SAEFormatError(f"{source}: activation {raw['activation']!r} is not supported")

    path = folder / WEIGHTS_FILE
    tensors = {key: t.float() for key, t in read_tensors(path).items()}
    expected = ("encoder.weight", "encoder.bias", "W_dec", "b_dec")
    missing = [k for k in expected if k not in tensors]
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise SAEFormatError(
            f"{path}: a sparsify SAE has tensors {list(expected)}; "
            f"missing {missing}, unsupported {extra}"
        )
    n_latents, d_in = tensors["encoder.weight"].shape
    d_in = raw.get("d_in") or d_in  # older sparsify configs do not record d_in
    num_latents = raw.get("num_latents") or d_in * raw.get("expansion_factor", 0) or n_latents
    try:
        cfg = SAEConfig(
            arch="topk",
            d_in=d_in,
            n_features=num_latents,
            k=raw.get("k", 32),  # sparsify's default
            subtract_b_dec_in_encoder=True,
            training={"imported_from": "sparsify", "source_config": raw},
        )
    except ValueError as err:
        raise SAEFormatError(f"{source}: {err}") from err
    n, d = cfg.n_features, cfg.d_in
    shapes = {"encoder.weight": [n, d], "encoder.bias": [n], "W_dec": [n, d], "b_dec": [d]}
    for key, shape in shapes.items():
        if list(tensors[key].shape) != shape:
            raise SAEFormatError(
                f"{path}: {key} has shape {list(tensors[key].shape)}, expected {shape} "
                f"(d_in={d}, num_latents={n})"
            )
    sae = empty_sae(cfg)
    weights = {
        "W_enc": tensors["encoder.weight"].t(),
        "b_enc": tensors["encoder.bias"],
        "W_dec": tensors["W_dec"],
        "b_dec": tensors["b_dec"],
    }
    sae.load_weights(weights, str(path))
    return sae
