"""Sizes as people write them (34M features, 8B tokens, 80G of memory) and bytes as printed.

Counts take k, M and B as powers of ten (a dictionary of 34M features has 34,000,000); memory
takes K, M, G and T as powers of two whatever the spelling (80G, 80GB and 80GiB are all
80 x 2^30 bytes: what GPU makers call "80 GB" and what torch reports as total_memory), and
every memory figure is printed in GiB.
"""

from __future__ import annotations

import argparse
import re

from monoscope.config_args import parse_count

GIB = 2**30
_MEMORY = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kmgt])(?:i?b)?\s*$", re.IGNORECASE)
_BINARY = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_size(text: str | int, what: str) -> int:
    """A count such as 34M, 16k, 8B, 1.5M, 1e6 or 4096, as an int; ValueError naming `what`."""
    if isinstance(text, int):
        return text
    try:
        return parse_count(text)
    except argparse.ArgumentTypeError as err:
        raise ValueError(f"{what}: {err}") from None


def parse_memory(text: str, what: str = "--gpu-mem") -> int:
    """Bytes of memory written 80G, 80GB, 80GiB or 512M (binary units, see the module's note)."""
    match = _MEMORY.match(text)
    if not match:
        raise ValueError(
            f"{what}: not a memory size: {text!r} (try 80G, 80GB or 80GiB: all mean 80 GiB)"
        )
    return int(float(match.group(1)) * _BINARY[match.group(2).lower()])


def gib(n_bytes: float) -> str:
    """Bytes as GiB, e.g. '1,037.5 GiB' (three significant places below 1 GiB)."""
    value = n_bytes / GIB
    return f"{value:,.1f} GiB" if value >= 1 else f"{value:.3g} GiB"


def disk(n_bytes: float) -> str:
    """Bytes on disk in the largest binary unit that leaves a number of 1 or more."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n_bytes >= size:
            return f"{n_bytes / size:,.1f} {unit}"
    return f"{int(n_bytes)} B"


def count(n: float) -> str:
    """A count in the short form the flags take: 34M, 1.5M, 16.4k, 8B, 512."""
    for suffix, size in (("B", 10**9), ("M", 10**6), ("k", 10**3)):
        if n >= size:
            return f"{n / size:.3g}{suffix}"
    return f"{n:.3g}"
