"""kill -9 of one process of a training run in 2 processes (`monoscope train --nproc 2`, which
starts torchrun), data-parallel or feature-sharded: torchrun ends the job, and the same command
run again resumes from the last checkpoint (for a sharded run, each process's part of it) to
the SAE an uninterrupted 2-process run trains, byte for byte."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.faults.test_kill import assert_same_sae, steps_logged

pytestmark = pytest.mark.faults

CLI = "import sys; from monoscope.cli import main; sys.exit(main(sys.argv[1:]))"
TIMEOUT_S = 300


@pytest.fixture(scope="module")
def acts(tmp_path_factory) -> Path:
    rng = np.random.default_rng(1)
    directions = rng.standard_normal((40, 16))
    codes = (rng.random((64 * 40, 40)) < 0.08) * rng.random((64 * 40, 40))
    path = tmp_path_factory.mktemp("dp_acts") / "acts.npy"
    np.save(path, (codes @ directions).astype(np.float32))
    return path


LAYOUTS = {"data-parallel": [], "feature-sharded": ["--shard-features"]}


def train_args(acts: Path, out: Path, layout: str) -> list[str]:
    """30 steps of 64 tokens in 2 processes, a checkpoint every 4."""
    return [
        "train",
        *("--acts", str(acts), "--out", str(out), "--features", "64", "--k", "4"),
        *("--batch-size", "64", "--tokens", str(64 * 30), "--checkpoint-every", "4"),
        *("--log-every", "1", "--no-progress", "--nproc", "2", *LAYOUTS[layout]),
    ]


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    cwd.mkdir(parents=True, exist_ok=True)
    env = os.environ | {"MONOSCOPE_THREADS": "1", "OMP_NUM_THREADS": "1"}
    log = open(cwd / f"train-{time.monotonic_ns()}.log", "w")  # noqa: SIM115 (the child's)
    return subprocess.Popen(
        [sys.executable, "-u", "-c", CLI, *args], cwd=cwd, env=env, stdout=log, stderr=log
    )


def finish(proc: subprocess.Popen) -> int:
    try:
        return proc.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"the run did not end within {TIMEOUT_S} s")


def process_of_rank(ancestor: int, rank: int) -> int | None:
    """The pid of the worker of `rank` among the descendants of `ancestor` (torchrun's)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            if f"RANK={rank}".encode() in environ and _descends(int(entry.name), ancestor):
                return int(entry.name)
        except OSError:
            continue  # gone meanwhile
    return None


def _descends(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        pid = int(fields[1])  # the parent's pid
    return False


@pytest.fixture(scope="module", params=list(LAYOUTS))
def layout(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def trained(acts, layout, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dp_ref") / "sae"
    assert finish(start(train_args(acts, out, layout), out.parent)) == 0
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_killing_one_process_and_rerunning_gives_the_same_sae(
    acts, layout, trained, tmp_path, seed
):
    out = tmp_path / "sae"
    args = train_args(acts, out, layout)
    proc = start(args, tmp_path)
    victim_rank, marks = random.Random(seed).choice([0, 1]), random.Random(seed).randint(6, 24)
    deadline = time.monotonic() + TIMEOUT_S
    logged = steps_logged(out)
    while logged() < marks:
        assert proc.poll() is None, "the run ended before the kill point"
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.005)
    victim = process_of_rank(proc.pid, victim_rank)
    assert victim is not None, f"no process of rank {victim_rank}"
    os.kill(victim, signal.SIGKILL)
    assert finish(proc) != 0  # torchrun ended the job: one of its processes died
    assert not (out / "weights.safetensors").exists()
    assert finish(start(args, tmp_path)) == 0
    assert_same_sae(out, trained)
