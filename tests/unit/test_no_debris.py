"""Issue 22, point 3: a failed run leaves no debris. A `train` that fails before its first
checkpoint and an `analyze` refused on a corrupt shard leave no folder or 0-feature store they
created (and keep everything that existed before them); `train --out` into a folder that is not
a monoscope run is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from monoscope.analyze import AnalyzeConfig, read_meta
from monoscope.analyze.opening import create_store, identity
from monoscope.analyze.schema import open_readonly
from monoscope.cli import build_parser, main
from monoscope.config_args import config_from_args
from monoscope.harvest import ActivationStore
from monoscope.sae import SAEConfig, build_sae
from monoscope.testing import harvest_tiny

SITE = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def acts_npy(tmp_path_factory) -> Path:
    """[3000, 16] activations an SAE can learn from."""
    gen = torch.Generator().manual_seed(0)
    dirs = torch.nn.functional.normalize(torch.randn(24, 16, generator=gen), dim=-1)
    codes = torch.rand(3000, 24, generator=gen) * (torch.rand(3000, 24, generator=gen) < 0.15)
    path = tmp_path_factory.mktemp("acts") / "acts.npy"
    np.save(path, (codes @ dirs * 5 + 0.3).numpy())
    return path


def train(acts: Path, out: Path, *extra: str) -> int:
    argv = ["train", "--acts", str(acts), "--out", str(out), "--features", "4x", "--k", "4"]
    return main([*argv, "--batch-size", "256", "--tokens", "2560", "--no-progress", *extra])


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    ("problem", "message"),
    [
        (["--lr", "-1"], "--lr must be at least 0"),  # refused by the settings
        (["--zeros"], "all zero"),  # refused once the data is read
        (["--lr", "1000", "--checkpoint-every", "100"], "no checkpoint was written yet"),
    ],
)
def test_a_train_failing_before_its_first_checkpoint_leaves_no_folder(
    acts_npy, tmp_path, capsys, problem, message
):
    acts = acts_npy
    if problem == ["--zeros"]:
        acts, problem = tmp_path / "zeros.npy", []
        np.save(acts, np.zeros((600, 16), dtype=np.float32))
    assert train(acts, tmp_path / "new" / "run" / "sae", *problem) == 2
    assert message in one_line_error(capsys)
    assert not (tmp_path / "new").exists()
    # A folder that existed before the run stays, though the run wrote into it.
    (tmp_path / "mine").mkdir()
    assert train(acts, tmp_path / "mine", *problem) == 2
    assert (tmp_path / "mine").is_dir()


def test_a_train_failing_after_a_checkpoint_keeps_it(acts_npy, tmp_path, capsys):
    out = tmp_path / "new" / "sae"
    assert train(acts_npy, out, "--lr", "1000", "--checkpoint-every", "1") == 2
    assert "last good checkpoint is kept" in one_line_error(capsys)
    assert (out / "checkpoint.json").is_file()


def test_train_refuses_a_folder_that_is_not_a_run(acts_npy, tmp_path, capsys):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "todo.txt").write_text("mine")
    for extra in ([], ["--overwrite"]):  # --overwrite would delete what monoscope did not write
        assert train(acts_npy, folder, *extra) == 2
        assert "exists and is not a training run this monoscope writes (it holds todo.txt" in (
            one_line_error(capsys)
        )
    assert [p.name for p in folder.iterdir()] == ["todo.txt"]
    assert (folder / "todo.txt").read_text() == "mine"
    # A run killed before its first checkpoint left its log: that folder is a run, resumed.
    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / "train_log.jsonl").write_text("")
    assert train(acts_npy, killed) == 0
    assert (killed / "weights.safetensors").is_file()


# -- analyze ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inputs(tiny_llama, corpus_file, tmp_path_factory) -> tuple[Path, Path]:
    """(sae folder, activation store) whose first shard has one byte flipped."""
    root = tmp_path_factory.mktemp("debris")
    store = harvest_tiny(
        tiny_llama, corpus_file, root / "acts", SITE, batch_tokens=128, shard_tokens=600
    )
    shard = store.path / store.shards[0]["file"]
    data = bytearray(shard.read_bytes())
    data[-7] ^= 0x55
    shard.write_bytes(bytes(data))
    sae = build_sae(SAEConfig(arch="topk", d_in=32, n_features=64, k=4, site=SITE), seed=0)
    sae.save(root / "sae")
    return root / "sae", store.path


def analyze_argv(inputs, out: Path) -> list[str]:
    sae, acts = inputs
    return ["analyze", "--sae", str(sae), "--acts", str(acts), "--out", str(out), "--no-map"]


def test_analyze_refused_on_a_corrupt_shard_leaves_nothing(inputs, tmp_path, capsys):
    out = tmp_path / "new" / "features.db"
    assert main([*analyze_argv(inputs, out), "--no-progress"]) == 2
    assert "shard-00000" in one_line_error(capsys)
    assert not (tmp_path / "new").exists()
    # Into a folder that exists: the folder and what it held stay, no store is left in it.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    assert main([*analyze_argv(inputs, tmp_path / "mine" / "f.db"), "--no-progress"]) == 2
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]


def test_analyze_keeps_a_store_that_existed_before_it(inputs, tmp_path, capsys):
    out = tmp_path / "features.db"
    argv = [*analyze_argv(inputs, out), "--no-progress"]
    cfg = config_from_args(AnalyzeConfig, build_parser().parse_args(argv))
    from monoscope.sae import load_sae

    # An earlier run of the same analysis, killed before its first progress checkpoint.
    create_store(out, identity(cfg, load_sae(inputs[0]), ActivationStore(inputs[1]), SITE)).close()
    assert main(argv) == 2
    assert "shard-00000" in one_line_error(capsys)
    assert read_meta(open_readonly(out))["complete"] is False
