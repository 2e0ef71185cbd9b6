"""How many rows a loop over blocks of rows takes at a time.

The temporaries of such loops are kept to BLOCK_BYTES: small enough to stay in cache, and below
the mmap threshold the trainer sets (monoscope/train/memory.py: 1 MiB), so the allocator reuses
one block's memory for the next instead of mapping fresh pages and faulting them in each time.
"""

from __future__ import annotations

BLOCK_BYTES = 512 * 1024


def block_rows(row_bytes: int) -> int:
    """Rows per block for rows of `row_bytes` bytes."""
    return max(1, BLOCK_BYTES // row_bytes)
