"""Atomic writes leave files and folders with the permissions plain ones would get."""

from __future__ import annotations

import json
import os
import stat
import sys

import pytest

from monoscope import artifacts

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")


@posix_only
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_writes_follow_the_umask_not_mkstemp(tmp_path, monkeypatch, umask):
    monkeypatch.setattr(artifacts, "UMASK", umask)
    path = tmp_path / "manifest.json"
    artifacts.atomic_write_json(path, {"a": 1})
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert artifacts.read_json(path) == {"a": 1}
    folder = artifacts.temp_dir_beside(tmp_path / "site")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~umask
    assert folder.parent == tmp_path and folder.name.startswith(".site.")


def test_the_umask_read_at_import_is_the_process_umask():
    current = os.umask(0)
    os.umask(current)
    assert current == artifacts.UMASK


def test_a_sealed_document_catches_a_changed_value_and_names_the_file(tmp_path):
    from monoscope.artifacts import CorruptFileError, read_sealed_json, write_sealed_json

    path = tmp_path / "manifest.json"
    doc = {"tokens": 3000, "sites": {"a": {"mean_norm": 1.5}}, "complete": True}
    write_sealed_json(path, doc)
    assert read_sealed_json(path) == doc
    path.write_text(json.dumps(json.loads(path.read_text())))  # reindented: still valid
    assert read_sealed_json(path) == doc
    path.write_text(path.read_text().replace("3000", "3001"))  # one flipped bit of a digit
    with pytest.raises(CorruptFileError, match=r"manifest\.json is damaged or was edited"):
        read_sealed_json(path)
    path.write_text(json.dumps(doc))  # written before seals: read as it is
    assert read_sealed_json(path) == doc


def test_write_debris_of_named_files_is_removed_and_nothing_else(tmp_path):
    for name in (".features.db.progress.safetensors.ab12.tmp", ".other.db.x.tmp", "keep.tmp"):
        (tmp_path / name).write_bytes(b"x")
    artifacts.remove_write_debris(tmp_path, "features.db")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.db.x.tmp", "keep.tmp"]
    artifacts.remove_write_debris(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.tmp"]
