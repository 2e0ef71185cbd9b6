"""safetensors files written as they are laid out, tensor by tensor, never whole in memory.

`safetensors.torch.save` builds the whole file as one bytes object: saving a large SAE (or a
checkpoint of one) then needs its memory twice. `atomic_write_safetensors` writes the same
bytes (the header `save` would write, then each tensor's data in the same order) straight
from the tensors into a temp file, hashing them on the way, and renames it into place.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import torch
from torch import Tensor

from monoscope.artifacts import temp_file_beside

_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
WRITE_BYTES = 64 * 2**20
"""Bytes of tensor data handed to one write (and one hash update)."""


def layout(tensors: dict[str, Tensor]) -> tuple[list[str], bytes]:
    """(the tensors' names in file order, the file's first bytes: the header's length and the
    header): safetensors' order, widest dtype first then by name, and its JSON, padded with
    spaces to a multiple of 8 bytes."""
    names = sorted(tensors, key=lambda name: (-tensors[name].element_size(), name))
    entries, offset = {}, 0
    for name in names:
        t = tensors[name]
        if t.dtype not in _DTYPES:
            raise ValueError(f"{name}: safetensors cannot hold dtype {t.dtype}")
        end = offset + t.numel() * t.element_size()
        entries[name] = {
            "dtype": _DTYPES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, end],
        }
        offset = end
    header = json.dumps(entries, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    return names, struct.pack("<Q", len(header)) + header


def file_size(tensors: dict[str, Tensor]) -> int:
    """The bytes of the file `atomic_write_safetensors` writes for `tensors`."""
    _, head = layout(tensors)
    return len(head) + sum(t.numel() * t.element_size() for t in tensors.values())


def atomic_write_safetensors(path: str | os.PathLike, tensors: dict[str, Tensor]) -> str:
    """Write `tensors` (contiguous, on any device) to `path` as `safetensors.torch.save` lays
    them out, so that readers see either the old file or the whole new one; the sha256 of
    the bytes written. A GPU's tensors are copied to the CPU a WRITE_BYTES piece at a time:
    host memory holds one piece, not the file (a sharded GPU run's checkpoint is hundreds of
    GiB a rank, every rank of a node writing at once)."""
    path = Path(path)
    names, head = layout(tensors)
    digest = hashlib.sha256(head)
    fd, tmp = temp_file_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(head)
            for name in names:
                data = tensors[name].reshape(-1).view(torch.uint8)
                for start in range(0, len(data), WRITE_BYTES):
                    piece = data[start : start + WRITE_BYTES].cpu().numpy().data
                    f.write(piece)
                    digest.update(piece)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)  # never leave the temp file behind
        raise
    return digest.hexdigest()
