"""A flipped byte in every kind of artifact (issue 22): the command that reads it stops with one
line that names the damaged file, never a traceback and never a silently wrong result.

One small run (harvest, an interrupted and a finished train, an interrupted and a finished
analyze) is built once; each case copies the artifact's folder, flips bytes at seeded places
and runs the command that reads it through the CLI's own entry point.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest

from monoscope.analyze import runner as analyze_runner
from monoscope.cli import main
from monoscope.train import trainer as train_run

pytestmark = pytest.mark.faults

SITE = "blocks.1.hook_resid_post"
SEEDS = [0, 1, 2]


class Killed(Exception):
    """Stands in for a kill at a chosen step (the kill -9 suite does the real thing)."""


def cli(*argv: str) -> int:
    return main([*argv, "--no-progress"] if argv[0] in PROGRESS else list(argv))


PROGRESS = {"harvest", "train", "analyze"}


def train_args(acts: Path, out: Path) -> list[str]:
    return [
        "train",
        "--acts",
        str(acts),
        "--out",
        str(out),
        "--arch",
        "topk",
        "--features",
        "4x",
        "--k",
        "4",
        "--batch-size",
        "128",
        "--checkpoint-every",
        "2",
    ]


def analyze_args(sae: Path, acts: Path, out: Path) -> list[str]:
    return [
        "analyze",
        "--sae",
        str(sae),
        "--acts",
        str(acts),
        "--out",
        str(out),
        "--no-map",
        "--top-n",
        "4",
        "--window",
        "8",
        "--batch-size",
        "128",
        "--checkpoint-every",
        "2",
    ]


def interrupted(module, name: str, after_calls: int, argv: list[str]) -> None:
    """Run `argv` in process with `module.name` raising Killed on its `after_calls`-th call."""
    real, calls = getattr(module, name), []

    def dying(*args, **kwargs):
        calls.append(1)
        if len(calls) == after_calls:
            raise Killed
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(module, name, dying)
        with pytest.raises(Killed):
            cli(*argv)


def harvest_args(model: Path, corpus: Path, out: Path) -> list[str]:
    return [
        "harvest",
        "--model",
        str(model),
        "--site",
        SITE,
        "--corpus",
        str(corpus),
        "--tokens",
        "4k",
        "--context",
        "32",
        "--shard-tokens",
        "1024",
        "--out",
        str(out),
    ]


@pytest.fixture(scope="module")
def run(tiny_model_dir, corpus_file, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corruption")
    acts = root / "acts"
    assert cli(*harvest_args(tiny_model_dir, corpus_file, acts)) == 0
    assert cli(*train_args(acts, root / "sae")) == 0
    interrupted(train_run, "learning_rate", 7, train_args(acts, root / "sae_partial"))
    assert cli(*analyze_args(root / "sae", acts, root / "features.db")) == 0
    interrupted(analyze_runner, "encode", 6, analyze_args(root / "sae", acts, root / "partial.db"))
    assert (root / "partial.db.progress.safetensors").is_file()
    return root


def flip(path: Path, seed: int, count: int = 1, mask: int = 0xFF) -> None:
    """XOR `count` bytes of `path` at seeded random places with `mask` (0xFF: garbage; 0x01:
    the lowest bit, which turns one digit of a JSON number into another)."""
    data = bytearray(path.read_bytes())
    rng = random.Random(seed)
    for at in rng.sample(range(len(data)), count):
        data[at] ^= mask
    path.write_bytes(bytes(data))


def copy_run(run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return copy


def refused_naming(capsys, code: int, *names: str) -> str:
    """Assert one line on stderr, exit 2, naming one of `names`; return the line."""
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert any(name in err for name in names), err
    return err


@pytest.mark.parametrize("seed", SEEDS)
def test_a_flipped_shard_is_named_by_train_and_by_harvest_verify(
    run, tiny_model_dir, corpus_file, tmp_path, capsys, seed
):
    r = copy_run(run, tmp_path)
    shards = sorted((r / "acts").glob("shard-*.safetensors"))
    shard = shards[seed % len(shards)]
    flip(shard, seed)
    refused_naming(capsys, cli(*train_args(r / "acts", r / "new_sae")), shard.name)
    assert not (r / "new_sae").exists()  # and no debris
    code = cli(*harvest_args(tiny_model_dir, corpus_file, r / "acts"), "--verify")
    refused_naming(capsys, code, shard.name)


@pytest.mark.parametrize("mask", [0xFF, 0x01])
@pytest.mark.parametrize("seed", range(6))
def test_a_flipped_manifest_is_named(run, tmp_path, capsys, seed, mask):
    r = copy_run(run, tmp_path)
    flip(r / "acts" / "manifest.json", seed, mask=mask)
    code = cli(*train_args(r / "acts", r / "new_sae"))
    refused_naming(capsys, code, "manifest.json", "shard-")


@pytest.mark.parametrize("mask", [0xFF, 0x01])
@pytest.mark.parametrize("file", ["weights.safetensors", "config.json", "checksums.json"])
@pytest.mark.parametrize("seed", SEEDS)
def test_a_flipped_sae_file_is_named_by_eval_and_convert(run, tmp_path, capsys, file, seed, mask):
    r = copy_run(run, tmp_path)
    flip(r / "sae" / file, seed, mask=mask)
    code = cli("eval", "--sae", str(r / "sae"), "--acts", str(r / "acts"), "--max-tokens", "512")
    refused_naming(capsys, code, file)
    code = cli("convert", str(r / "sae"), "--to", "saelens", "--out", str(r / "exported"))
    refused_naming(capsys, code, file)
    assert not (r / "exported").exists()


@pytest.mark.parametrize("mask", [0xFF, 0x01])
@pytest.mark.parametrize("file", ["tensors", "checkpoint.json"])
@pytest.mark.parametrize("seed", SEEDS)
def test_a_flipped_train_checkpoint_is_named_on_resume(run, tmp_path, capsys, seed, file, mask):
    r = copy_run(run, tmp_path)
    folder = r / "sae_partial"
    target = next(folder.glob("checkpoint-*.safetensors")) if file == "tensors" else None
    flip(target or folder / file, seed, mask=mask)
    code = cli(*train_args(r / "acts", folder))
    refused_naming(capsys, code, (target or folder / file).name)


@pytest.mark.parametrize("seed", SEEDS)
def test_a_flipped_analyze_progress_file_is_named_on_resume(run, tmp_path, capsys, seed):
    r = copy_run(run, tmp_path)
    flip(r / "partial.db.progress.safetensors", seed)
    code = cli(*analyze_args(r / "sae", r / "acts", r / "partial.db"))
    refused_naming(capsys, code, "partial.db.progress.safetensors")


@pytest.mark.parametrize("seed", range(8))
def test_a_damaged_feature_store_is_named_or_served_in_part(run, tmp_path, capsys, seed):
    """SQLite keeps no page checksums: a flip inside a number goes unseen (see docs/LOG.md).
    Whatever else it hits is named, and the pages it did not hit are still exported."""
    r = copy_run(run, tmp_path)
    flip(r / "features.db", seed, count=4)
    code = cli("export-site", str(r / "features.db"), "--out", str(r / "site"))
    if code != 0:
        refused_naming(capsys, code, "features.db")
