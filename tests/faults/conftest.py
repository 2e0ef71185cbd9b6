"""The fault suite's tiny inputs: a random tiny model saved to a folder (the corpus is the
session's `corpus_file` from tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from monoscope.testing import save_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("fault_model") / "llama", "llama")
