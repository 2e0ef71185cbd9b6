"""Shared fixtures: tiny random models of every supported family, and a small corpus file."""

from __future__ import annotations

import os

# Tests never touch the network: the hub client reads this once, at import.
os.environ["HF_HUB_OFFLINE"] = "1"

import json
import sqlite3
from pathlib import Path

import pytest

from monoscope.interpret import ExplainConfig, ScoreConfig, run
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


@pytest.fixture
def explain_and_score_over_http():
    """Explain and score features of a store through an OpenAI-compatible endpoint; checks what a
    user relies on: every feature gets a row, scores are in range, a rerun pays for nothing."""
    return _explain_and_score_over_http


def _explain_and_score_over_http(db, base_url: str, model: str, features: str) -> None:
    """Explain and score `features` through an OpenAI-compatible endpoint; check what a user
    relies on: every feature gets a row, scores are in range, and a rerun pays for nothing."""
    common = {
        "db": str(db),
        "backend": "openai",
        "model": model,
        "base_url": base_url,
        "features": features,
        "progress": False,
        "max_concurrency": 2,
    }
    explained = run(ExplainConfig(**common))
    assert explained["calls_sent"] == explained["done"] > 0
    scored = run(ScoreConfig(**common, scorers="detection,fuzzing", hard_negatives=0))
    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT feature, status, raw FROM explanations").fetchall()
    assert len(rows) == explained["done"] and all(raw for _, _, raw in rows)
    scores = conn.execute("SELECT scorer, status, score, details FROM scores").fetchall()
    assert len(scores) == 2 * scored["done"]
    assert all(s is None or 0 <= s <= 1 for _, _, s, _ in scores)
    again = run(ScoreConfig(**common, scorers="detection,fuzzing", hard_negatives=0))
    assert again["calls_sent"] == 0
    redone = run(ExplainConfig(**common, overwrite=True))
    assert redone["calls_sent"] == 0 and redone["calls_cached"] == explained["done"]
