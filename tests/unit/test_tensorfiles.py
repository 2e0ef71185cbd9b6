"""safetensors files written tensor by tensor: the bytes safetensors writes, never half a file."""

from __future__ import annotations

import hashlib

import pytest
import torch
from safetensors.torch import load_file, save

from monoscope import tensorfiles
from monoscope.tensorfiles import atomic_write_safetensors, file_size

MIXED = {
    "W_enc": torch.randn(3, 5),
    "b_enc": torch.randn(5),
    "half": torch.randn(3).half(),
    "brain": torch.randn(2, 2).bfloat16(),
    "counts": torch.arange(7),
    "mask": torch.tensor([True, False, True]),
    "empty": torch.zeros(0, 4),
    "wide": torch.randn(2, dtype=torch.float64),
}


@pytest.mark.parametrize(
    "tensors", [MIXED, {}, {"one": torch.ones(1)}], ids=["mixed", "none", "one"]
)
def test_the_file_is_the_bytes_safetensors_writes(tmp_path, monkeypatch, tensors):
    monkeypatch.setattr(tensorfiles, "WRITE_BYTES", 8)  # many pieces per tensor
    path = tmp_path / "t.safetensors"
    digest = atomic_write_safetensors(path, tensors)
    expected = save(tensors)
    assert path.read_bytes() == expected
    assert digest == hashlib.sha256(expected).hexdigest()
    assert file_size(tensors) == len(expected)
    loaded = load_file(path)
    assert loaded.keys() == tensors.keys()
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "t.safetensors"
    atomic_write_safetensors(path, {"a": torch.ones(4)})
    before = path.read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(tensorfiles.os, "fsync", broken)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_safetensors(path, {"a": torch.zeros(4), "b": torch.ones(2)})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["t.safetensors"]


def test_a_dtype_safetensors_cannot_hold_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"z: safetensors cannot hold dtype torch\.complex64"):
        atomic_write_safetensors(
            tmp_path / "t.safetensors", {"z": torch.zeros(2, dtype=torch.complex64)}
        )
    assert not list(tmp_path.iterdir())
