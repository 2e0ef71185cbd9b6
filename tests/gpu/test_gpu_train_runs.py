"""`monoscope train` on CUDA: one process against the same run on the CPU, one process holding a
feature-sharded dictionary, the same stopped midway and resumed from its checkpoint, and (on
machines with two GPUs or more) data-parallel and feature-sharded runs over NCCL, each against
the CPU run. A few steps only: the GPU's sums round otherwise than the CPU's, and over many
steps near-tied top-k choices flip."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.gpu.test_gpu_train_step import cosine

STEPS, BATCH = 8, 256
OPTIONS = ["--features", "256", "--k", "8", "--batch-size", str(BATCH), "--no-progress"]
OPTIONS += ["--tokens", str(STEPS * BATCH)]


@pytest.fixture(scope="module")
def acts(tmp_path_factory):
    """[4096, 32] activations from 96 sparse directions."""
    rng = np.random.default_rng(0)
    directions = rng.standard_normal((96, 32))
    codes = (rng.random((4096, 96)) < 0.06) * rng.random((4096, 96))
    path = tmp_path_factory.mktemp("gpu_train") / "acts.npy"
    np.save(path, (codes @ directions).astype(np.float32))
    return path


@pytest.fixture(scope="module")
def on_cpu(acts, tmp_path_factory):
    from monoscope.cli import main

    out = tmp_path_factory.mktemp("gpu_train_cpu") / "sae"
    assert main(["train", "--acts", str(acts), "--out", str(out), *OPTIONS, "--device", "cpu"]) == 0
    return out


def assert_close_to(folder, reference) -> None:
    """Every weight tensor along the reference's (cosine > 0.99: Adam turns the rounding of a
    near-zero gradient into a step of up to the lr, so elementwise bounds would be loose), and
    the last logged FVU within 2% of it."""
    from safetensors.torch import load_file

    got = load_file(str(folder / "weights.safetensors"))
    want = load_file(str(reference / "weights.safetensors"))
    assert got.keys() == want.keys()
    for name in want:
        assert cosine(got[name], want[name]) > 0.99, name
    fvu = [
        json.loads((f / "train_log.jsonl").read_text().splitlines()[-1])["fvu"]
        for f in (folder, reference)
    ]
    assert fvu[0] == pytest.approx(fvu[1], rel=0.02)


@pytest.mark.parametrize("extra", [[], ["--shard-features"]], ids=["whole", "sharded"])
def test_a_cuda_run_trains_the_sae_the_cpu_trains(acts, on_cpu, tmp_path, extra):
    from monoscope.cli import main

    out = tmp_path / "sae"
    argv = ["train", "--acts", str(acts), "--out", str(out), *OPTIONS, "--device", "cuda"]
    assert main([*argv, *extra]) == 0
    assert_close_to(out, on_cpu)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs or more (NCCL)")
@pytest.mark.parametrize("extra", [[], ["--shard-features"]], ids=["data-parallel", "sharded"])
def test_two_gpus_train_the_sae_the_cpu_trains(acts, on_cpu, tmp_path, extra):
    out = tmp_path / "sae"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node=2", "-m", "monoscope", "train", "--acts", str(acts)]
    command += ["--out", str(out), *OPTIONS, "--device", "cuda", *extra]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_close_to(out, on_cpu)


@pytest.mark.parametrize("extra", [[], ["--shard-features"]], ids=["whole", "sharded"])
def test_a_cuda_run_stopped_midway_resumes_from_its_checkpoint(
    acts, on_cpu, tmp_path, monkeypatch, extra
):
    """The checkpoint is written from the GPU a piece at a time and read back onto it."""
    from monoscope.cli import main
    from monoscope.train import trainer

    out = tmp_path / "sae"
    argv = ["train", "--acts", str(acts), "--out", str(out), *OPTIONS, "--device", "cuda"]
    argv += ["--checkpoint-every", "3", *extra]
    real = trainer.learning_rate

    def stopping(step, *args):
        if step == 5:
            raise KeyboardInterrupt
        return real(step, *args)

    with monkeypatch.context() as patched:
        patched.setattr(trainer, "learning_rate", stopping)
        assert main(argv) == 130  # interrupted: rerun to resume
    assert json.loads((out / "checkpoint.json").read_text())["step"] == 3
    assert main(argv) == 0
    assert_close_to(out, on_cpu)
