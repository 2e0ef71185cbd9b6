"""Finding the folders a feature store recorded after its run folder moved."""

from __future__ import annotations

import pytest

from monoscope.analyze.recorded import RecordedFolderMissing, locate


def test_recorded_path_is_used_where_it_still_exists(tmp_path, monkeypatch):
    (tmp_path / "runs" / "a" / "sae").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert locate("runs/a/sae", tmp_path / "elsewhere" / "f.db", "SAE").resolve() == (
        tmp_path / "runs" / "a" / "sae"
    )


def test_a_moved_run_folder_is_found_next_to_its_store(tmp_path, monkeypatch):
    moved = tmp_path / "copy"
    (moved / "sae").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)  # where "runs/a/sae" does not exist
    assert locate("runs/a/sae", moved / "features.db", "SAE") == moved / "sae"
    assert locate("/old/machine/runs/a/sae", moved / "features.db", "SAE") == moved / "sae"


def test_a_relative_path_is_tried_from_the_store_folder(tmp_path, monkeypatch):
    (tmp_path / "run" / "sub" / "sae").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    found = locate("sub/sae", tmp_path / "run" / "features.db", "SAE")
    assert found == tmp_path / "run" / "sub" / "sae"


def test_missing_folder_names_store_and_option(tmp_path):
    with pytest.raises(RecordedFolderMissing, match=r"features\.db.*'gone/sae'.*--sae FOLDER"):
        locate("gone/sae", tmp_path / "features.db", "SAE", "--sae")
    with pytest.raises(RecordedFolderMissing, match="records no SAE folder"):
        locate(None, tmp_path / "features.db", "SAE")
