"""Training on a device and across processes: `--device`, `--prefetch`, `--nproc` / torchrun
(gloo on the CPU). Several processes must give the SAE one process gives with the same global
batch, within the rounding of the all-reduced sums (PARITY_TOLERANCE)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from monoscope.cli import main
from monoscope.distributed import World
from monoscope.launch import without_nproc
from monoscope.sae import BatchTopKSAE
from monoscope.sae.sharded import check_shardable_run
from monoscope.sae.shares import BatchShares, total_variance
from monoscope.train import TrainConfig, run
from monoscope.train.checkpoint import TrainingState, load_checkpoint, save_checkpoint
from monoscope.train.parallel import check_data_parallel, slice_of
from monoscope.train.prefetch import prefetched

PARITY_TOLERANCE = 1e-5
"""Largest weight difference allowed between a 2-process and a 1-process run (weights of
order 1; float32 sums in another order differ by ~1e-7 a step)."""


@pytest.fixture
def acts(tmp_path):
    """[3000, 16] activations from 40 sparse directions."""
    rng = np.random.default_rng(0)
    directions = rng.standard_normal((40, 16))
    codes = (rng.random((3000, 40)) < 0.08) * rng.random((3000, 40))
    rows = codes @ directions + 0.05 * rng.standard_normal((3000, 16))
    path = tmp_path / "acts.npy"
    np.save(path, rows.astype(np.float32))
    return path


def _options(arch: str) -> list[str]:
    k = ["--k", "4"] if arch in ("topk", "batchtopk") else ["--target-l0", "4"]
    return ["--arch", arch, "--features", "64", "--batch-size", "128", *k, "--no-progress"]


def _weights(folder) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "weights.safetensors"))


def _torchrun(args: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    env = os.environ | {"MONOSCOPE_THREADS": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += [f"--nproc-per-node={nproc}", "-m", "monoscope", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "relu", "jumprelu"])
def test_two_processes_train_the_sae_one_process_trains(acts, tmp_path, arch):
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["train", "--acts", str(acts), "--out", str(one), *_options(arch)]) == 0
    done = _torchrun(["train", "--acts", str(acts), "--out", str(two), *_options(arch)])
    assert done.returncode == 0, done.stderr[-2000:]
    a, b = _weights(one), _weights(two)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=0, atol=PARITY_TOLERANCE), name
        assert not torch.equal(a[name], torch.zeros_like(a[name]))
    log = (two / "train_log.jsonl").read_text().splitlines()
    assert len(log) == len((one / "train_log.jsonl").read_text().splitlines())


def test_train_nproc_starts_the_processes_itself(acts, tmp_path, monkeypatch):
    monkeypatch.setenv("MONOSCOPE_THREADS", "1")
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["train", "--acts", str(acts), "--out", str(one), *_options("topk")]) == 0
    args = ["train", "--acts", str(acts), "--out", str(two), *_options("topk"), "--nproc", "2"]
    assert main(args) == 0
    a, b = _weights(one), _weights(two)
    assert max(float((a[n] - b[n]).abs().max()) for n in a) <= PARITY_TOLERANCE
    config = json.loads((two / "config.json").read_text())
    assert config["training"]["processes"] == 2


def test_nproc_without_torchrun_from_python_says_how_to_start_them(acts, tmp_path):
    with pytest.raises(ValueError, match="torchrun --nproc-per-node 2 -m monoscope train"):
        run(TrainConfig(acts=str(acts), out=str(tmp_path / "o"), nproc=2, progress=False))


def test_what_cannot_be_split_over_processes_is_refused(monkeypatch):
    two = World(rank=0, size=2)
    monkeypatch.setattr(BatchTopKSAE, "data_parallel", False)  # as an architecture may be
    with pytest.raises(ValueError, match="batchtopk in 2 processes is not supported"):
        check_data_parallel(two, "batchtopk", 128, streaming=False)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="does not split into 2 equal slices"):
        check_data_parallel(two, "topk", 127, streaming=False)
    with pytest.raises(ValueError, match="--stream-model trains in one process"):
        check_data_parallel(two, "topk", 128, streaming=True)
    check_data_parallel(World(), "batchtopk", 127, streaming=True)  # one process: anything


def test_the_nth_largest_value_is_over_every_process():
    mine, theirs = torch.tensor([5.0, 1.0, 3.0]), torch.tensor([4.0, 6.0, 2.0])
    # Another process offers its own top n: here, stood in for by the gather.
    shares = BatchShares(2, gather=lambda top: torch.cat([top, theirs.topk(top.numel()).values]))
    assert [float(shares.nth_largest(mine, n)) for n in (1, 2, 3)] == [6.0, 5.0, 4.0]
    assert float(BatchShares().nth_largest(mine, 4)) == float("-inf")  # fewer than n


def test_each_process_takes_its_own_slice_of_the_batch():
    batch = torch.arange(12.0).view(6, 2)
    first, second = (slice_of(batch, World(rank, 2)) for rank in (0, 1))
    assert torch.equal(torch.cat([first, second]), batch)
    first += 1  # the trainer rotates its slice in place: the batch stays as it was
    assert torch.equal(batch, torch.arange(12.0).view(6, 2))


def test_shares_of_the_whole_batch_are_the_whole_batch_statistics():
    half = torch.randn(4, 5, dtype=torch.float64) * 3 + 1
    whole = torch.cat([half, half])  # two processes holding equal slices: the sum doubles
    shares = BatchShares(2, lambda t: t.mul_(2))
    assert shares.rows(half) == 8
    assert torch.allclose(shares.total_variance(half, 2.0), total_variance(whole, 2.0))
    assert torch.allclose(shares.mean(half.sum(1)) * 2, whole.sum(1).mean())
    one = BatchShares()
    assert torch.equal(one.total_variance(whole, 2.0), total_variance(whole, 2.0))
    assert torch.equal(one.mean(whole.sum(1)), whole.sum(1).mean())


def test_prefetched_batches_come_in_order_and_errors_reach_the_loop():
    batches = [torch.full((2, 3), float(i)) for i in range(5)]
    got = list(prefetched(iter(batches), torch.device("cpu"), ahead=2))
    assert all(torch.equal(a, b) for a, b in zip(got, batches, strict=True))

    def failing():
        yield batches[0]
        raise ValueError("the store went away")

    reader = prefetched(failing(), torch.device("cpu"), ahead=2)
    assert torch.equal(next(reader), batches[0])
    with pytest.raises(ValueError, match="the store went away"):
        next(reader)


def test_closing_a_prefetching_reader_stops_its_thread():
    endless = (torch.zeros(2) for _ in iter(int, 1))
    reader = prefetched(endless, torch.device("cpu"), ahead=1)
    next(reader)
    reader.close()
    assert not any(t.name == "prefetch" for t in threading.enumerate())


def test_a_prefetched_run_is_the_same_run(acts, tmp_path):
    common = dict(acts=str(acts), features="64", k=4, batch_size=128, progress=False)
    inline = run(TrainConfig(out=str(tmp_path / "a"), prefetch=0, **common))
    ahead = run(TrainConfig(out=str(tmp_path / "b"), prefetch=3, **common))
    for (name, p), q in zip(inline.state_dict().items(), ahead.state_dict().values(), strict=True):
        assert torch.equal(p, q), name


def test_a_device_that_is_not_here_is_one_line(acts, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code = main(["train", "--acts", str(acts), "--out", str(tmp_path / "o"), "--device", "cuda"])
    assert code == 2
    assert "no CUDA device is available here" in capsys.readouterr().err


def test_the_launcher_drops_nproc_in_both_spellings():
    assert without_nproc(["train", "--nproc", "2", "--k", "4"]) == ["train", "--k", "4"]
    assert without_nproc(["train", "--nproc=2", "--acts", "x"]) == ["train", "--acts", "x"]


def test_a_dictionary_that_cannot_fit_is_refused_before_any_work(acts, tmp_path):
    out = tmp_path / "o"
    with pytest.raises(ValueError, match=r"needs [\d,.]+ GiB per rank"):
        run(TrainConfig(acts=str(acts), out=str(out), features="400000000", k=4, batch_size=128))
    assert not out.exists()


SHARDED = ["--features", "96", "--batch-size", "128", "--k", "4", "--no-progress"]
"""96 features: slices of 48 and 32 in 2 and 3 processes."""


@pytest.mark.parametrize("nproc", [2, 3])
def test_a_feature_sharded_run_trains_the_sae_one_process_trains(acts, tmp_path, nproc):
    one, sharded = tmp_path / "one", tmp_path / "sharded"
    assert main(["train", "--acts", str(acts), "--out", str(one), *SHARDED]) == 0
    args = ["train", "--acts", str(acts), "--out", str(sharded), *SHARDED, "--shard-features"]
    done = _torchrun([*args, "--checkpoint-every", "5"], nproc)
    assert done.returncode == 0, done.stderr[-2000:]
    a, b = _weights(one), _weights(sharded)
    assert a.keys() == b.keys()
    for name in a:  # one ordinary SAE folder, gathered from the slices
        assert torch.allclose(a[name], b[name], rtol=0, atol=PARITY_TOLERANCE), name
    logs = [(f / "train_log.jsonl").read_text().splitlines() for f in (one, sharded)]
    for line_one, line_sharded in zip(*logs, strict=True):
        got, want = json.loads(line_sharded), json.loads(line_one)
        for key in ("l0", "dead_fraction", "fvu"):  # the whole dictionary's figures
            assert got[key] == pytest.approx(want[key], abs=1e-5), key
    training = json.loads((sharded / "config.json").read_text())["training"]
    assert training["shard_features"] and training["processes"] == nproc
    assert not list(sharded.glob("checkpoint*"))


def test_what_cannot_shard_its_features_is_refused(acts, tmp_path):
    def attempt(**options):
        base = dict(acts=str(acts), out=str(tmp_path / "o"), batch_size=128, progress=False)
        run(TrainConfig(**(base | dict(shard_features=True) | options)))

    with pytest.raises(ValueError, match="trains topk SAEs only, not relu"):
        attempt(arch="relu", features="64")
    with pytest.raises(ValueError, match="--k 40 is more than a slice of 32 features"):
        check_shardable_run("topk", 96, 40, processes=3)
    with pytest.raises(ValueError, match="96 features do not split into 5 equal slices"):
        check_shardable_run("topk", 96, 4, processes=5)
    with pytest.raises(ValueError, match="from a store"):
        attempt(stream_model="x", site="blocks.0.hook_resid_post", tokens=256)
    assert not (tmp_path / "o").exists()


def test_a_checkpoint_resumes_only_in_the_layout_that_wrote_it(tmp_path):
    state = TrainingState(4, {"sae": {}}, {"x": torch.ones(3)})
    save_checkpoint(tmp_path, state, World())  # one process of a sharded run
    assert [p.name for p in tmp_path.glob("checkpoint-*")] == [
        "checkpoint-00000004-0of1.safetensors"
    ]
    assert torch.equal(load_checkpoint(tmp_path, World()).tensors["x"], torch.ones(3))
    with pytest.raises(ValueError, match="with --shard-features in 1 process: resume it so"):
        load_checkpoint(tmp_path, World(rank=0, size=2))
    with pytest.raises(ValueError, match="with --shard-features in 1 process"):
        load_checkpoint(tmp_path)
    plain = tmp_path / "plain"
    plain.mkdir()
    save_checkpoint(plain, state)
    with pytest.raises(ValueError, match="a run without --shard-features"):
        load_checkpoint(plain, World())
