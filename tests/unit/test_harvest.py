"""monoscope.harvest: the store's contents, resume after a crash, full disk, corruption, reader."""

from __future__ import annotations

import errno
import json
from itertools import islice

import pytest
import torch

import monoscope.artifacts as artifacts
from monoscope.data import CorpusSpec, iter_contexts
from monoscope.harvest import (
    ActivationStore,
    CorruptShardError,
    HarvestConfig,
    StoreError,
    harvest,
    run,
)
from monoscope.harvest.store import _check_finite, first_nonfinite_row
from monoscope.models import UnknownSiteError

SITES = ["blocks.1.hook_resid_post", "blocks.0.mlp.hook_post"]


def config(corpus_file, out, **overrides) -> HarvestConfig:
    options = dict(
        sites=SITES,
        corpus=str(corpus_file),
        tokens=1000,
        out=str(out),
        context=16,
        batch_tokens=64,
        shard_tokens=200,
        progress=False,
    )
    return HarvestConfig(**{**options, **overrides})


def store_tensors(store: ActivationStore) -> dict[str, torch.Tensor]:
    shards = [store.load_shard(i) for i in range(len(store.shards))]
    return {k: torch.cat([s[k] for s in shards]) for k in shards[0]}


@pytest.fixture(scope="module")
def reference(tiny_llama, corpus_file, tmp_path_factory) -> ActivationStore:
    return run(config(corpus_file, tmp_path_factory.mktemp("ref") / "acts"), tiny_llama)


def test_store_rows_are_the_models_activations(reference, tiny_llama, corpus_file):
    m = reference.manifest
    assert m["complete"] and m["tokens"] == reference.n_tokens == 1000
    assert m["model"]["name"] == tiny_llama.name and m["model"]["revision"] == tiny_llama.revision
    assert set(m["sites"]) == set(SITES) and reference.d(SITES[1]) == 64
    assert len(m["shards"]) == 5 and all(len(s["sha256"]) == 64 for s in m["shards"])
    rows = store_tensors(reference)
    assert rows["acts.blocks.1.hook_resid_post"].shape == (1000, 32)
    assert rows["position"].min() == 1 and not m["include_bos"]  # BOS rows are excluded
    # Recompute the first contexts independently and compare row by row.
    packed = iter_contexts(CorpusSpec(str(corpus_file)), tiny_llama.tokenizer, 16)
    contexts = list(islice(packed, 4))
    ids = torch.tensor([c.tokens for c in contexts])
    expected = tiny_llama.capture(ids, SITES, stop_early=False)
    for site in SITES:
        torch.testing.assert_close(rows[f"acts.{site}"][:60], expected[site][:, 1:].reshape(60, -1))
        norms = expected[site][:, 1:].reshape(60, -1).norm(dim=-1)
        torch.testing.assert_close(rows[f"norms.{site}"][:60], norms)
        assert reference.mean_norm(site) == pytest.approx(
            rows[f"norms.{site}"].double().mean().item()
        )
    assert rows["token_ids"][:15].tolist() == contexts[0].tokens[1:]
    assert rows["doc_index"][:60].tolist() == [d for c in contexts for d in c.doc_ids[1:]]
    assert rows["context_index"][:30].tolist() == [0] * 15 + [1] * 15
    assert rows["position"][:15].tolist() == list(range(1, 16))


def test_storage_dtypes_and_bos_option(tiny_llama, corpus_file, tmp_path, reference):
    store = run(
        config(corpus_file, tmp_path / "bf16", dtype="bf16", include_bos=True, tokens=64),
        tiny_llama,
    )
    rows = store_tensors(store)
    assert rows["acts.blocks.1.hook_resid_post"].dtype == torch.bfloat16
    assert store.manifest["dtype"] == "bfloat16" and store.manifest["include_bos"]
    assert rows["position"][0] == 0 and rows["token_ids"][0] == tiny_llama.tokenizer.bos_token_id
    fp16 = run(config(corpus_file, tmp_path / "fp16", dtype="float16", tokens=64), tiny_llama)
    assert store_tensors(fp16)["acts.blocks.0.mlp.hook_post"].dtype == torch.float16


class Crash(Exception):
    pass


def crash_after(lm, monkeypatch, n_calls: int) -> None:
    real, calls = lm.capture, []

    def capture(*args, **kwargs):
        calls.append(1)
        if len(calls) > n_calls:
            raise Crash
        return real(*args, **kwargs)

    monkeypatch.setattr(lm, "capture", capture)


def test_killed_harvest_resumes_without_loss_or_duplication(
    tiny_llama, corpus_file, tmp_path, reference, monkeypatch
):
    cfg = config(corpus_file, tmp_path / "acts")
    with monkeypatch.context() as m:
        crash_after(tiny_llama, m, 9)  # 9 batches of 60 rows: two 240-row shards are written
        with pytest.raises(Crash):
            run(cfg, tiny_llama)
    partial = ActivationStore(tmp_path / "acts", allow_incomplete=True)
    assert not partial.manifest["complete"] and partial.n_tokens == 480
    with pytest.raises(StoreError, match="incomplete"):
        ActivationStore(tmp_path / "acts")
    # Debris of a crash between writing a shard and recording it: ignored, then replaced.
    (tmp_path / "acts" / "shard-00002.safetensors").write_bytes(b"half a shard")
    (tmp_path / "acts" / ".shard-00002.safetensors.x.tmp").write_bytes(b"junk")
    resumed = run(cfg, tiny_llama)
    assert resumed.n_tokens == 1000
    for key, value in store_tensors(reference).items():
        torch.testing.assert_close(store_tensors(resumed)[key], value, rtol=0, atol=0)
    assert not list((tmp_path / "acts").glob("*.tmp"))


def test_full_disk_mid_shard_keeps_no_half_written_shard(
    tiny_llama, corpus_file, tmp_path, reference, monkeypatch
):
    cfg = config(corpus_file, tmp_path / "acts")
    real_fsync, writes = artifacts.os.fsync, []

    def fsync(fd):
        writes.append(fd)
        if len(writes) == 4:  # manifest, shard 0, manifest, then shard 1 hits a full disk
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    with monkeypatch.context() as m:
        m.setattr(artifacts.os, "fsync", fsync)
        with pytest.raises(OSError, match="disk full while writing shard-00001"):
            run(cfg, tiny_llama)
    folder = tmp_path / "acts"
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "shard-00000.safetensors"]
    ActivationStore(folder, allow_incomplete=True).verify()
    resumed = run(cfg, tiny_llama)
    for key, value in store_tensors(reference).items():
        torch.testing.assert_close(store_tensors(resumed)[key], value, rtol=0, atol=0)


def test_corrupt_and_truncated_shards_are_named(reference, tmp_path):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(reference.path, folder)
    shard = folder / "shard-00003.safetensors"
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CorruptShardError, match=r"shard-00003.safetensors is corrupt"):
        ActivationStore(folder).verify()
    shard.write_bytes(bytes(data[:100]))
    with pytest.raises(CorruptShardError, match=r"shard-00003.safetensors is truncated"):
        ActivationStore(folder).verify()
    shard.unlink()
    with pytest.raises(CorruptShardError, match="missing"):
        ActivationStore(folder).verify()


def test_existing_stores_are_resumed_reused_or_refused(tiny_llama, corpus_file, tmp_path, capsys):
    cfg = config(corpus_file, tmp_path / "acts", tokens=100)
    first = run(cfg, tiny_llama)
    again = run(cfg, tiny_llama)
    assert "already complete" in capsys.readouterr().err and again.n_tokens == first.n_tokens
    with pytest.raises(StoreError, match=r"target_tokens: store has 100, asked 200.*--overwrite"):
        run(config(corpus_file, tmp_path / "acts", tokens=200), tiny_llama)
    replaced = run(config(corpus_file, tmp_path / "acts", tokens=200, overwrite=True), tiny_llama)
    assert replaced.n_tokens == 200
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="not an activation store"):
        run(config(corpus_file, tmp_path / "other"), tiny_llama)


def test_bad_input_fails_before_anything_is_written(tiny_llama, corpus_file, tmp_path):
    with pytest.raises(ValueError, match="tokens must be a positive"):
        config(corpus_file, tmp_path / "a", tokens=0)
    with pytest.raises(UnknownSiteError, match="valid sites"):
        run(config(corpus_file, tmp_path / "a", sites=["blocks.7.hook_resid_post"]), tiny_llama)
    with pytest.raises(ValueError, match="corpus path does not exist"):
        run(config(tmp_path / "nowhere.txt", tmp_path / "a"), tiny_llama)
    with pytest.raises(ValueError, match="unknown dtype"):
        config(corpus_file, tmp_path / "a", dtype="int8")
    assert not (tmp_path / "a").exists()


def test_a_corpus_that_runs_out_says_so(tiny_llama, corpus_file, tmp_path):
    with pytest.raises(StoreError, match="corpus ran out"):
        cfg = config(corpus_file, tmp_path / "acts", tokens=10**6, batch_tokens=8192)
        run(cfg, tiny_llama)


def test_store_compatibility_checks(reference):
    reference.check_compatible(model=reference.manifest["model"]["name"], site=SITES[0])
    with pytest.raises(StoreError, match="harvested from model"):
        reference.check_compatible(model="gpt2")
    with pytest.raises(StoreError, match=r"has no site 'blocks.5.hook_resid_post'"):
        reference.check_compatible(site="blocks.5.hook_resid_post")
    with pytest.raises(StoreError, match="several sites"):
        reference.d()


def row_keys(acts: torch.Tensor) -> list[tuple]:
    return sorted(map(tuple, acts[:, :3].tolist()))


def test_reader_shuffles_tokens_and_splits_disjointly(reference):
    site = SITES[0]
    every = torch.cat([a for a, _ in reference.rows(site, split="all")])
    train = torch.cat(list(reference.batches(64, site, buffer_tokens=300, seed=1)))
    heldout = torch.cat(list(reference.batches(64, site, split="heldout", shuffle=False)))
    assert train.shape[0] + heldout.shape[0] == 1000 and heldout.shape[0] > 0
    assert row_keys(torch.cat([train, heldout])) == row_keys(every)  # each row exactly once
    unshuffled = torch.cat(list(reference.batches(64, site, shuffle=False)))
    assert not torch.equal(train, unshuffled) and row_keys(train) == row_keys(unshuffled)
    again = torch.cat(list(reference.batches(64, site, buffer_tokens=300, seed=1)))
    torch.testing.assert_close(train, again)  # same seed, same order
    sizes = [b.shape[0] for b in reference.batches(64, site, drop_last=True)]
    assert set(sizes) == {64}
    # Whole contexts go to one split.
    held_contexts = torch.cat([m["context_index"] for _, m in reference.rows(site, "heldout")])
    train_contexts = torch.cat([m["context_index"] for _, m in reference.rows(site, "train")])
    assert not set(held_contexts.tolist()) & set(train_contexts.tolist())


def test_ranks_read_disjoint_shards(reference):
    ranks = [reference.shard_indices(r, 2) for r in range(2)]
    assert ranks == [[0, 2, 4], [1, 3]]
    per_rank = [
        torch.cat(list(reference.batches(50, SITES[0], split="all", rank=r, world_size=2)))
        for r in range(2)
    ]
    assert per_rank[0].shape[0] + per_rank[1].shape[0] == 1000
    with pytest.raises(ValueError, match="rank 2"):
        reference.shard_indices(2, 2)


def test_python_api_and_manifest_is_plain_json(tiny_llama, corpus_file, tmp_path):
    store = harvest(
        tiny_llama,
        CorpusSpec(str(corpus_file), seed=3),
        SITES[:1],
        50,
        tmp_path / "acts",
        context=16,
        progress=False,
    )
    manifest = json.loads((tmp_path / "acts" / "manifest.json").read_text())
    assert manifest["corpus"]["seed"] == 3 and manifest["tokens"] == store.n_tokens == 50
    assert manifest["shards"][0]["sha256"] == artifacts.sha256_file(
        tmp_path / "acts" / "shard-00000.safetensors"
    )


def test_finite_check_is_exact_when_the_fast_sum_overflows():
    huge = torch.full((4, 3), 3e38)  # finite, but their sum overflows to inf
    assert not torch.isfinite(huge.sum())
    assert first_nonfinite_row(huge) is None  # the rows, searched, hold none
    _check_finite(huge, "shard-00000.safetensors", "site")
    huge[2, 1] = float("nan")
    assert first_nonfinite_row(huge) == 2
    with pytest.raises(StoreError, match=r"shard-00000\.safetensors, row 2, site site"):
        _check_finite(huge, "shard-00000.safetensors", "site")
    assert first_nonfinite_row(torch.randn(100, 8).bfloat16()) is None
    assert first_nonfinite_row(torch.tensor([[1.0], [float("-inf")]])) == 1
