"""Every artifact verified, every error naming its file (issue 22, points 4, 6 and 7): SAE
checksums on save, load and convert; a harvest rerun checking its shards; a damaged manifest,
SAE config or feature-store column named in one line, the rest of a page still shown."""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3

import pytest
import torch

from monoscope.artifacts import CorruptFileError, read_json
from monoscope.cli import main
from monoscope.harvest import ActivationStore, CorruptShardError, HarvestConfig, StoreError, run
from monoscope.sae import CorruptSAEError, SAEConfig, build_sae, load_sae, verification
from monoscope.sae.checksums import CHECKSUMS_FILE, tensor_digests, write_checksums
from monoscope.testing import random_feature_store, write_interpretation


def flip_byte(path, offset: int) -> None:
    """Flip one bit of the byte at `offset` (negative: from the end): the size is unchanged."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def data_offset(path, tensor: str) -> int:
    """Where `tensor`'s data starts in a safetensors file (after the 8-byte length + header)."""
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    return 8 + n + json.loads(data[8 : 8 + n])[tensor]["data_offsets"][0]


@pytest.fixture
def sae_dir(tmp_path):
    sae = build_sae(SAEConfig(arch="topk", d_in=16, n_features=64, k=4), seed=1)
    sae.save(tmp_path / "sae")
    return tmp_path / "sae"


# -- point 4: SAE weights carry checksums ---------------------------------------------------
def test_saved_sae_records_checksums_and_loads_verified(sae_dir):
    doc = read_json(sae_dir / CHECKSUMS_FILE)
    weights = doc["files"]["weights.safetensors"]
    assert set(weights["tensors"]) == {"W_enc", "b_enc", "W_dec", "b_dec"}
    assert weights["tensors"]["W_dec"]["shape"] == [64, 16]
    assert weights["bytes"] == (sae_dir / "weights.safetensors").stat().st_size
    loaded = load_sae(sae_dir)
    assert tensor_digests(loaded.W_dec) == weights["tensors"]["W_dec"]["sha256"]


def test_a_flipped_byte_in_the_weights_is_an_error_naming_the_file(sae_dir):
    original = load_sae(sae_dir)
    flip_byte(sae_dir / "weights.safetensors", -5)  # inside the last tensor's data
    with pytest.raises(CorruptSAEError, match=r"weights\.safetensors is damaged: tensor \w+"):
        load_sae(sae_dir)
    # --no-verify (verify=False, or the CLI's verification block) loads what is there.
    damaged = load_sae(sae_dir, verify=False)
    with verification(False):
        assert torch.equal(load_sae(sae_dir).W_enc, damaged.W_enc)
    differs = [
        k for k, v in original.state_dict().items() if not torch.equal(v, damaged.state_dict()[k])
    ]
    assert len(differs) == 1


def test_truncated_weights_and_edited_config_are_named(sae_dir):
    weights = sae_dir / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8])
    with pytest.raises(CorruptSAEError, match=r"weights\.safetensors is truncated or padded"):
        load_sae(sae_dir)
    shutil.rmtree(sae_dir)
    build_sae(SAEConfig(arch="topk", d_in=16, n_features=64, k=4)).save(sae_dir)
    config = sae_dir / "config.json"
    text = config.read_text()
    # Still valid JSON, a different SAE: only the checksum can tell.
    config.write_text(text.replace('"input_scale": 1.0', '"input_scale": 1.5'))
    with pytest.raises(CorruptSAEError, match=r"config\.json has changed since it was saved"):
        load_sae(sae_dir)
    assert load_sae(sae_dir, verify=False).cfg.input_scale == 1.5
    config.write_text(text[: len(text) // 2])  # truncated: not JSON at all
    with pytest.raises(CorruptSAEError, match=r"config\.json is not valid JSON"):
        load_sae(sae_dir, verify=False)


def test_a_damaged_checksums_file_is_named(sae_dir):
    path = sae_dir / CHECKSUMS_FILE
    path.write_text(path.read_text()[:40])
    with pytest.raises(CorruptSAEError, match=r"checksums\.json is not valid JSON"):
        load_sae(sae_dir)
    load_sae(sae_dir, verify=False)


def test_a_folder_without_checksums_loads_with_a_warning(sae_dir, caplog):
    (sae_dir / CHECKSUMS_FILE).unlink()  # as an older monoscope saved it
    with caplog.at_level(logging.WARNING, logger="monoscope.sae.checksums"):
        sae = load_sae(sae_dir)
    assert sae.cfg.n_features == 64
    assert f"{sae_dir} has no checksums.json" in caplog.text


def test_chunked_hashes_name_the_damaged_range(tmp_path):
    sae = build_sae(SAEConfig(arch="topk", d_in=16, n_features=64, k=4))
    sae.save(tmp_path / "sae")
    weights = {k: v.contiguous() for k, v in sae.state_dict().items()}
    size = (tmp_path / "sae" / "weights.safetensors").stat().st_size
    write_checksums(tmp_path / "sae", {}, {"weights.safetensors": (size, weights)}, 1024)
    doc = read_json(tmp_path / "sae" / CHECKSUMS_FILE)
    assert len(doc["files"]["weights.safetensors"]["tensors"]["W_dec"]["sha256"]) == 4  # 4 KiB
    path = tmp_path / "sae" / "weights.safetensors"
    flip_byte(path, data_offset(path, "W_dec") + 2500)  # in W_dec's third KiB
    with pytest.raises(CorruptSAEError, match=r"tensor W_dec \(bytes 2,048\.\.3,072 of its"):
        load_sae(tmp_path / "sae")


def test_convert_refuses_a_damaged_sae_and_records_checksums(sae_dir, tmp_path, capsys):
    flip_byte(sae_dir / "weights.safetensors", -5)
    out = tmp_path / "copy"
    assert main(["convert", str(sae_dir), "--to", "monoscope", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "weights.safetensors is damaged" in err
    assert "--no-verify" in err and not out.exists()
    argv = ["convert", str(sae_dir), "--to", "monoscope", "--out", str(out), "--no-verify"]
    assert main(argv) == 0
    assert (out / CHECKSUMS_FILE).is_file()
    copy = load_sae(out)  # the copy carries checksums of what it holds
    assert torch.equal(copy.W_dec, load_sae(sae_dir, verify=False).W_dec)


def test_an_import_records_checksums_on_convert(sae_dir, tmp_path):
    from monoscope.sae import convert

    convert(sae_dir, to="saelens", out=tmp_path / "sl")
    assert not (tmp_path / "sl" / CHECKSUMS_FILE).exists()  # foreign files: none of ours
    convert(tmp_path / "sl", to="monoscope", out=tmp_path / "back")
    flip_byte(tmp_path / "back" / "weights.safetensors", -5)
    with pytest.raises(CorruptSAEError, match=r"back/weights\.safetensors is damaged"):
        load_sae(tmp_path / "back")


# -- point 6: a harvest rerun checks the store ----------------------------------------------
def harvest_config(corpus_file, out, **overrides) -> HarvestConfig:
    options = dict(
        sites=["blocks.1.hook_resid_post"],
        corpus=str(corpus_file),
        tokens=600,
        out=str(out),
        context=16,
        batch_tokens=64,
        shard_tokens=200,
        progress=False,
    )
    return HarvestConfig(**{**options, **overrides})


@pytest.fixture(scope="module")
def complete_store(tiny_llama, corpus_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("store") / "acts"
    run(harvest_config(corpus_file, out), tiny_llama)
    return out


@pytest.fixture
def store_copy(complete_store, tmp_path):
    shutil.copytree(complete_store, tmp_path / "acts")
    return tmp_path / "acts"


def test_harvest_rerun_names_a_truncated_or_missing_shard(
    store_copy, tiny_llama, corpus_file, capsys
):
    cfg = harvest_config(corpus_file, store_copy)
    assert run(cfg, tiny_llama).n_tokens == 600  # whole: checked, and complete
    assert "3 shards checked" in capsys.readouterr().err
    shard = store_copy / "shard-00001.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[:-100])
    with pytest.raises(CorruptShardError, match=r"shard-00001\.safetensors is truncated"):
        run(cfg, tiny_llama)
    shard.unlink()
    with pytest.raises(CorruptShardError, match=r"shard-00001\.safetensors is listed .* missing"):
        run(cfg, tiny_llama)


def test_harvest_rerun_with_verify_catches_a_flipped_byte(store_copy, tiny_llama, corpus_file):
    flip_byte(store_copy / "shard-00002.safetensors", -3)  # same size
    run(harvest_config(corpus_file, store_copy), tiny_llama)  # sizes only: not seen
    with pytest.raises(CorruptShardError, match=r"shard-00002\.safetensors is corrupt"):
        run(harvest_config(corpus_file, store_copy, verify=True), tiny_llama)


def test_cli_harvest_rerun_error_is_one_line(store_copy, tiny_model_dirs, corpus_file, capsys):
    (store_copy / "shard-00000.safetensors").unlink()
    argv = ["harvest", "--model", str(tiny_model_dirs["llama"]), "--out", str(store_copy)]
    argv += ["--site", "blocks.1.hook_resid_post", "--corpus", str(corpus_file)]
    argv += ["--tokens", "600", "--context", "16", "--batch-tokens", "64"]
    argv += ["--shard-tokens", "200", "--no-progress", "--verify"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "shard-00000.safetensors is listed" in err


# -- point 7: errors name the file; one broken field leaves the rest ------------------------
def test_a_truncated_manifest_is_named(store_copy, tiny_llama, corpus_file):
    manifest = store_copy / "manifest.json"
    manifest.write_text(manifest.read_text()[:300])
    with pytest.raises(StoreError, match=rf"{manifest} is not valid JSON .*harvest --overwrite"):
        ActivationStore(store_copy)
    with pytest.raises(StoreError, match=rf"{manifest} is not valid JSON .*--overwrite"):
        run(harvest_config(corpus_file, store_copy), tiny_llama)


def test_read_json_names_the_file(tmp_path):
    path = tmp_path / "checkpoint.json"
    path.write_text('{"step": 3, "file": "check')
    with pytest.raises(CorruptFileError, match=rf"{path} is not valid JSON \(Unterminated"):
        read_json(path)
    path.write_bytes(b'{"step": \xff}')
    with pytest.raises(CorruptFileError, match=rf"{path} is damaged: byte 9 is not UTF-8"):
        read_json(path)


@pytest.fixture
def broken_db(tmp_path):
    """A feature store with a damaged JSON column in each table the feature page reads."""
    vocab = [f"tok{i}" for i in range(40)]
    db = random_feature_store(tmp_path / "features.db", n_features=16, vocab=vocab)
    write_interpretation(db, {3: "the letter t"}, scores={3: {"detection": 0.8}})
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE features SET hist = '{' WHERE id = 3")
        conn.execute(
            "UPDATE examples SET tokens = '[1, 2' WHERE feature = 3 AND kind = 'top' AND rank = 0"
        )
        conn.execute("UPDATE scores SET details = 'not json' WHERE feature = 3")
    conn.close()
    return db


def test_a_broken_field_is_named_and_the_page_renders(broken_db, caplog):
    pytest.importorskip("fastapi.testclient", reason="needs monoscope[serve]")
    from fastapi.testclient import TestClient

    from monoscope.serve import open_app

    with caplog.at_level(logging.WARNING):
        app, _ = open_app(broken_db)  # the catalogue leaves the damaged example out
        response = TestClient(app).get("/api/features/3")
    assert response.status_code == 200
    record = response.json()
    assert record["hist"] is None and record["explanation"] == "the letter t"
    assert record["logit_top"] and record["neighbours"] and record["density"] > 0
    top = record["examples"]["top"]
    assert len(top) == 19 and all(e["rank"] != 0 for e in top)
    assert record["scores"][0]["details"] is None and record["scores"][0]["score"] == 0.8
    errors = record["errors"]
    assert len(errors) == 3
    assert any(f"{broken_db}: features.hist of feature 3 is not valid JSON" in e for e in errors)
    assert any("examples.tokens of feature 3 (top example, bucket" in e for e in errors)
    assert any("scores.details of feature 3 (detection score)" in e for e in errors)
    assert "examples.tokens of feature 3 (a top example)" in caplog.text
    assert TestClient(app).get("/api/features/4").json()["errors"] == []


def test_export_site_exports_a_broken_field_with_a_warning(broken_db, tmp_path, caplog):
    from monoscope.serve import export_site

    with caplog.at_level(logging.WARNING):
        out = export_site(broken_db, tmp_path / "site", shard_size=8, similar=0)
    assert "features.hist of feature 3 is not valid JSON" in caplog.text
    text = (out / "data" / "features" / "0000.js").read_text()
    records = json.loads(text[text.index(",") + 1 : text.rindex(")")])["features"]
    assert records[3]["hist"] is None and len(records[3]["errors"]) == 3
    assert records[2]["hist"] is not None and records[2]["errors"] == []


def test_a_damaged_meta_value_names_the_store_and_key(tmp_path, capsys):
    from monoscope.analyze.schema import FeatureStoreError
    from monoscope.serve import FeatureStore

    db = random_feature_store(tmp_path / "features.db", n_features=8)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE meta SET value = '[0.1, 0.' WHERE key = 'hist_edges'")
    conn.close()
    with pytest.raises(FeatureStoreError, match=rf"{db}: meta value 'hist_edges' is not valid"):
        FeatureStore(db)
    assert main(["export-site", str(db), "--out", str(tmp_path / "site")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert f"{db}: meta value 'hist_edges' is not valid JSON (Expecting " in err
    assert "rerun `monoscope analyze` with --overwrite" in err
    assert not (tmp_path / "site").exists()
