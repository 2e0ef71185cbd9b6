"""kill -9 of one process of a `torchrun -m monoscope harvest`: the rerun (the same torchrun
command, or one process) completes the store, and it is the store one uninterrupted process
writes, shard for shard, with no entry file or temporary file left. A process that fails stops
the others, each with one line.

The kill point is drawn from a fixed seed: a count of shard files on disk (temporary ones
included), then a few milliseconds more; torchrun then stops the other process itself."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.faults

SITE = "blocks.1.hook_resid_post"
TIMEOUT_S = 240
PROCESS_KEYS = ("processes", "seconds", "checksum")


def harvest_args(model: Path, corpus: Path, out: Path) -> list[str]:
    """8 shards (7 of 420 rows, one of 60): process 0 of 2 makes 0, 2, 4, 6; process 1 the rest."""
    return [
        *("harvest", "--model", str(model), "--site", SITE, "--corpus", str(corpus)),
        *("--tokens", "3000", "--out", str(out), "--context", "16", "--batch-tokens", "64"),
        *("--shard-tokens", "400", "--no-progress"),
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(args: list[str], log: Path, processes: int = 2) -> subprocess.Popen:
    """`monoscope ARGS` under torchrun with `processes` (plainly with 1), output in `log`."""
    command = [sys.executable, "-u", "-m"]
    if processes > 1:
        command += ["torch.distributed.run", f"--nproc-per-node={processes}"]
        command += ["--master-addr=127.0.0.1", f"--master-port={free_port()}", "-m"]
    with open(log, "w") as f:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        return subprocess.Popen([*command, "monoscope", *args], stdout=f, stderr=f, env=env)


def run_to_end(args: list[str], log: Path, processes: int = 2) -> None:
    proc = start(args, log, processes)
    assert proc.wait(timeout=TIMEOUT_S) == 0, log.read_text()


def worker(launcher: subprocess.Popen, rank: int) -> psutil.Process:
    """The process torchrun started as `rank`, once it is there."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        for child in psutil.Process(launcher.pid).children(recursive=True):
            try:
                if child.environ().get("RANK") == str(rank):
                    return child
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        time.sleep(0.05)
    pytest.fail(f"torchrun started no process of rank {rank}")


def shard_files(out: Path) -> int:
    """Shard files in `out`, temporary ones included: a kill comes in or after the k-th write."""
    return len(list(out.glob("*shard-*.safetensors*"))) if out.is_dir() else 0


def kill_rank(args: list[str], out: Path, rank: int, seed: int) -> None:
    """Start the harvest under torchrun and SIGKILL process `rank` at the seeded point."""
    rng = random.Random(f"harvest-distributed-{rank}-{seed}")
    marks, extra_s = rng.randint(1, 6), rng.uniform(0.0, 0.01)
    log = out.parent / f"killed-{rank}-{seed}.log"
    launcher = start(args, log)
    victim = worker(launcher, rank)
    deadline = time.monotonic() + TIMEOUT_S
    while shard_files(out) < marks:
        assert launcher.poll() is None, f"torchrun ended before {marks} shards:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"no {marks} shards within {TIMEOUT_S} s"
        time.sleep(0.002)
    time.sleep(extra_s)
    victim.send_signal(signal.SIGKILL)
    assert launcher.wait(timeout=TIMEOUT_S) != 0, "the harvest finished before the kill"
    assert "wrote " not in log.read_text()
    assert not json.loads((out / "manifest.json").read_text())["complete"]


def assert_same_store(got: Path, want: Path) -> None:
    """The same files (no entry or temporary file left), shards byte for byte, manifests
    equal but for the run's timing and process count."""
    assert sorted(p.name for p in got.iterdir()) == sorted(p.name for p in want.iterdir())
    for shard in sorted(want.glob("shard-*.safetensors")):
        assert (got / shard.name).read_bytes() == shard.read_bytes(), shard.name
    manifests = [json.loads((p / "manifest.json").read_text()) for p in (got, want)]
    for m in manifests:
        assert m["complete"]
        for key in PROCESS_KEYS:
            m.pop(key, None)
    assert manifests[0] == manifests[1]


@pytest.fixture(scope="module")
def one_process(tiny_model_dir, corpus_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one_process") / "acts"
    run_to_end(harvest_args(tiny_model_dir, corpus_file, out), out.parent / "log", processes=1)
    return out


@pytest.mark.parametrize("rank", [0, 1])
@pytest.mark.parametrize("seed", [0, 1])
def test_killed_process_reruns_to_the_single_process_store(
    one_process, tiny_model_dir, corpus_file, tmp_path, rank, seed
):
    out = tmp_path / "acts"
    args = harvest_args(tiny_model_dir, corpus_file, out)
    kill_rank(args, out, rank, seed)
    run_to_end(args, tmp_path / "rerun.log")
    assert_same_store(out, one_process)
    assert json.loads((out / "manifest.json").read_text())["processes"] == 2


def test_killed_multi_process_harvest_resumes_in_one_process(
    one_process, tiny_model_dir, corpus_file, tmp_path
):
    out = tmp_path / "acts"
    args = harvest_args(tiny_model_dir, corpus_file, out)
    kill_rank(args, out, 1, 2)
    run_to_end(args, tmp_path / "rerun.log", processes=1)
    assert_same_store(out, one_process)


def test_a_failing_process_stops_the_others_each_with_one_line(
    tiny_model_dir, corpus_file, tmp_path
):
    """Process 0 alone opens the store; here it refuses the folder, and process 1 says so
    (unless torchrun, which stops the others once one fails, stops it before it prints)."""
    out = tmp_path / "acts"
    out.mkdir()
    (out / "notes.txt").write_text("not a store")
    log = tmp_path / "failed.log"
    assert start(harvest_args(tiny_model_dir, corpus_file, out), log).wait(TIMEOUT_S) != 0
    ours = [line for line in log.read_text().splitlines() if line.startswith("monoscope harvest")]
    refused = (
        f"monoscope harvest: error: {out} exists and is not an activation store; refusing "
        "to write into it"
    )
    stopped = (
        "monoscope harvest: error: harvest process 0 (of 2) failed, its error says why; "
        "process 1 stopped with it"
    )
    assert refused in ours and set(ours) <= {refused, stopped}, ours
    assert "monoscope/harvest" not in log.read_text()  # no traceback of ours
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
