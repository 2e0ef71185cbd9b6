"""Harvest across processes: `torchrun -m monoscope harvest` writes the store one process writes
(every shard byte for byte, the same manifest but for its timing and process count), and the
entry files a multi-process harvest leaves are folded, kept or redone on the next open."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from monoscope.harvest import ActivationStore, HarvestConfig, StoreError, run
from monoscope.harvest.forward import ShardMaker, progress_bar
from monoscope.harvest.manifest import corpus_spec, open_store
from monoscope.harvest.parallel import _check_same_settings, _read_shared_manifest
from monoscope.harvest.plan import plan_shards
from monoscope.harvest.records import entry_name, record_in_entry_file, settle_entries

SITE = "blocks.1.hook_resid_post"
PROCESS_KEYS = ("processes", "seconds", "checksum")
"""Manifest keys that name the run rather than the store: its process count and timing (and
the seal over them)."""


def options(model: Path, corpus: Path, out: Path) -> dict:
    """5 shards of 2 forward batches (4 x 120 rows, then 70): process 0 of 2 makes three."""
    return dict(
        model=str(model),
        sites=[SITE],
        corpus=str(corpus),
        tokens=550,
        out=str(out),
        context=16,
        batch_tokens=64,
        shard_tokens=100,
        progress=False,
    )


def cli_args(cfg: dict) -> list[str]:
    return [
        *("harvest", "--model", cfg["model"], "--site", SITE, "--corpus", cfg["corpus"]),
        *("--tokens", str(cfg["tokens"]), "--out", cfg["out"], "--context", str(cfg["context"])),
        *("--batch-tokens", str(cfg["batch_tokens"]), "--shard-tokens", str(cfg["shard_tokens"])),
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def torchrun(args: list[str], processes: int = 2) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={processes}"]
    command += ["--master-addr=127.0.0.1", f"--master-port={free_port()}"]
    return subprocess.run(
        [*command, "-m", "monoscope", *args],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def assert_same_store(got: Path, want: Path) -> None:
    """The same files, every shard byte for byte, manifests equal but for PROCESS_KEYS."""
    assert sorted(p.name for p in got.iterdir()) == sorted(p.name for p in want.iterdir())
    for shard in sorted(want.glob("shard-*.safetensors")):
        assert (got / shard.name).read_bytes() == shard.read_bytes(), shard.name
    manifests = [json.loads((p / "manifest.json").read_text()) for p in (got, want)]
    for m in manifests:
        for key in PROCESS_KEYS:
            m.pop(key, None)
    assert manifests[0] == manifests[1]


@pytest.fixture(scope="module")
def reference(tiny_model_dirs, tiny_llama, corpus_file, tmp_path_factory) -> ActivationStore:
    out = tmp_path_factory.mktemp("one_process") / "acts"
    return run(HarvestConfig(**options(tiny_model_dirs["llama"], corpus_file, out)), tiny_llama)


def test_torchrun_harvest_is_the_single_process_store(
    reference, tiny_model_dirs, corpus_file, tmp_path
):
    out = tmp_path / "acts"
    done = torchrun(cli_args(options(tiny_model_dirs["llama"], corpus_file, out)))
    assert done.returncode == 0, done.stderr
    assert done.stdout.count(f"wrote 550 tokens x 1 site(s) to {out}") == 1  # process 0's
    # Process 0's bar counts its own rows: shards 0, 2 and 4 (120 + 120 + 70), not all 550.
    assert "harvest (process 0 of 2): 100%" in done.stderr and "310/310" in done.stderr
    assert_same_store(out, reference.path)
    store = ActivationStore(out)
    assert store.manifest["processes"] == 2 and "processes" not in reference.manifest
    for split in ("train", "heldout"):
        for (got, got_meta), (want, want_meta) in zip(
            store.rows(split=split), reference.rows(split=split), strict=True
        ):
            assert torch.equal(got, want)
            assert all(torch.equal(got_meta[k], want_meta[k]) for k in want_meta)


def entries_as_processes_left_them(cfg: HarvestConfig, lm, indices: set[int]) -> Path:
    """A store as a killed 2-process harvest leaves it: a fresh manifest, the shards `indices`
    written with their entry files, one shard written without its entry, a temporary file."""
    _, out, manifest = open_store(cfg, lm)
    plan = plan_shards(cfg, manifest)
    maker = ShardMaker(cfg, lm, corpus_spec(cfg), 0)
    bar = progress_bar(False, 0, 0, "")
    for shard in plan[: max(indices) + 2]:
        made = maker.make(shard, bar)
        if shard.index in indices:
            record_in_entry_file(out, made)
        elif shard.index == max(indices) + 1:
            record_in_entry_file(out, made)
            (out / entry_name(shard.index)).unlink()  # killed between the shard and its entry
    (out / ".shard-00009.safetensors.x.tmp").write_bytes(b"half")
    return out


def test_one_process_resumes_a_multi_process_store(
    reference, tiny_model_dirs, tiny_llama, corpus_file, tmp_path, capsys, monkeypatch
):
    """Entries that continue the manifest are folded in; one past a gap (shard 3 while 2 is
    missing) is redone by one process, as is one whose entry file is damaged."""
    cfg = HarvestConfig(**options(tiny_model_dirs["llama"], corpus_file, tmp_path / "acts"))
    out = entries_as_processes_left_them(cfg, tiny_llama, {0, 1, 3})
    damaged = out / entry_name(1)
    damaged.write_text(damaged.read_text().replace('"n_contexts": 8', '"n_contexts": 9'))
    calls = []
    capture = tiny_llama.capture

    def counted(*args, **kwargs):
        calls.append(1)
        return capture(*args, **kwargs)

    monkeypatch.setattr(tiny_llama, "capture", counted)
    run(cfg, tiny_llama)
    assert "shard 1 will be harvested again" in capsys.readouterr().err
    assert len(calls) == 8  # shards 1 to 4, two forward batches each: shard 0 was folded in
    assert_same_store(out, reference.path)


def test_reopening_keeps_the_written_shards_for_the_processes_to_skip(
    tiny_model_dirs, tiny_llama, corpus_file, tmp_path
):
    cfg = HarvestConfig(**options(tiny_model_dirs["llama"], corpus_file, tmp_path / "acts"))
    out = entries_as_processes_left_them(cfg, tiny_llama, {0, 2})
    _, _, manifest = open_store(cfg, tiny_llama)
    pending = settle_entries(out, manifest, plan_shards(cfg, manifest), True, True)
    assert pending == {2}
    assert [s["file"] for s in manifest["shards"]] == ["shard-00000.safetensors"]
    assert ActivationStore(out, allow_incomplete=True).manifest == manifest
    names = {p.name for p in out.iterdir()}
    assert names == {"manifest.json", "shard-00000.safetensors"} | {
        "shard-00002.safetensors",
        entry_name(2),
    }
    # The next plan starts after the folded shard: shard 2 is still where the plan puts it.
    assert [s.index for s in plan_shards(cfg, manifest)] == [1, 2, 3, 4]


def test_processes_must_agree_on_settings_and_see_one_folder(tmp_path):
    main = {"batch_tokens": 64, "tokens": 550, "store": {"model": {"revision": "a"}}}
    mine = {"batch_tokens": 128, "tokens": 550, "store": {"model": {"revision": "a"}}}
    with pytest.raises(StoreError) as err:
        _check_same_settings(main, mine, 1)
    assert str(err.value) == (
        "harvest process 1 was started with other settings than process 0 (batch_tokens: 128 "
        "here, 64 in process 0): start every process with the same command"
    )
    _check_same_settings(main, dict(main), 1)
    (tmp_path / "manifest.json").write_text("{}")
    with pytest.raises(StoreError, match=r"sees another .*manifest\.json than process 0 wrote"):
        _read_shared_manifest(tmp_path, ("sha256-of-another-file", []), 1)
    with pytest.raises(StoreError, match=r"cannot read .*: --out must be one folder that every"):
        _read_shared_manifest(tmp_path / "elsewhere", ("x", []), 1)
