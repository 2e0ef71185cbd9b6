"""`load_model`: built-in names, local folders and Hugging Face hub ids, one code path."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from monoscope.models.builtin import BUILTIN_MODELS, converted_dir
from monoscope.models.hub import ModelNotFoundError, first_line, hub_load_options
from monoscope.models.language_model import LanguageModel
from monoscope.runtime import default_device, parse_dtype


def _weights_fingerprint(folder: Path) -> str:
    """sha256 over the weight files' names and bytes: pins a local model's exact weights."""
    h = hashlib.sha256()
    for f in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            while block := fh.read(1 << 22):
                h.update(block)
    return h.hexdigest()


def load_model(
    name_or_path: str,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device | None = None,
) -> LanguageModel:
    """Load a causal LM and its tokenizer.

    name_or_path: a built-in name (`smollm2-135m`), a local folder saved with
    `save_pretrained`, or a Hugging Face hub id (downloaded through `from_pretrained`).
    dtype: the compute dtype of the weights (float32, bfloat16, float16).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = parse_dtype(dtype)
    device = torch.device(device) if device is not None else default_device()
    source, revision = name_or_path, ""
    options: dict[str, str | bool] = {}
    if name_or_path in BUILTIN_MODELS:
        folder, revision = converted_dir(name_or_path)
        source = str(folder)
    elif Path(name_or_path).is_dir():
        revision = _weights_fingerprint(Path(name_or_path))
    elif Path(name_or_path).exists() or name_or_path.startswith((".", "/", "~")):
        raise ModelNotFoundError(
            f"model path {name_or_path!r} is not a folder with a saved model "
            f"(built-in models: {sorted(BUILTIN_MODELS)})"
        )
    else:
        options, revision = hub_load_options(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **options)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, **options)
    except OSError as err:
        raise ModelNotFoundError(
            f"could not load model {name_or_path!r}: it is not a built-in model "
            f"({', '.join(sorted(BUILTIN_MODELS))}) nor a local folder, and loading it from the "
            f"Hugging Face hub failed: {first_line(err)}"
        ) from err
    if not revision:
        revision = getattr(model.config, "_commit_hash", None) or "unknown"
    # PreTrainedModel.to is decorated with functools.wraps, whose typeshed type does not bind
    # `self`: mypy reads `device` as the model.
    model = model.to(device)  # type: ignore[arg-type]
    return LanguageModel(model, tokenizer, name_or_path, revision)
