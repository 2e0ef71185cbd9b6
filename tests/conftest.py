"""Shared fixtures: tiny random models of every supported family, and a small corpus file."""

from __future__ import annotations

import os

# Tests never touch the network: the hub client reads this once, at import.
os.environ["HF_HUB_OFFLINE"] = "1"

import json
from pathlib import Path

import pytest

from monoscope.models import LanguageModel, load_model
from monoscope.testing import TINY_FAMILIES, save_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_models")
    return {family: save_tiny_model(root / family, family) for family in TINY_FAMILIES}


@pytest.fixture(scope="session")
def tiny_llama(tiny_model_dirs) -> LanguageModel:
    return load_model(str(tiny_model_dirs["llama"]), device="cpu")


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory) -> Path:
    """A JSONL corpus of ~40 kB of varied English-like text (about 40k byte tokens)."""
    words = ["the", "model", "reads", "a", "token", "and", "writes"]
    words += ["features", "into", "the", "residual", "stream"]
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    with open(path, "w") as f:
        for i in range(400):
            text = " ".join(words[(i * 7 + j * 3) % len(words)] for j in range(10 + i % 13))
            f.write(json.dumps({"text": f"Document {i}: {text}."}) + "\n")
    return path
