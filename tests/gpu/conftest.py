"""The GPU tier (issue 24): the CUDA step against the CPU step, bfloat16 selection within
tolerance, eval/analyze/attribute and `train` runs on CUDA against the CPU (with two GPUs or
more, data-parallel and feature-sharded over NCCL too), on tiny things.

Where CUDA is absent every test here is skipped, with its reason, before any fixture runs; the
modules import nothing heavy at their top, so collecting them costs next to nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

HERE = Path(__file__).parent
REASON = "no CUDA device: tests/gpu runs only where torch.cuda.is_available()"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # A hook of a conftest sees every collected item: mark only this folder's.
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason=REASON)
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(skip)
