"""Give memory a training step frees back to the system at once (glibc's malloc).

glibc raises its mmap threshold, by default, each time a large block is freed (up to 32 MiB),
and from then on serves blocks of that size from the heap, whose free memory it keeps unless
the free space at its top exceeds twice the threshold. A training step allocates and frees
tens of MiB (gradients, the step's buffers) in a different order each phase, so a process left
to the default holds a step's worth of freed memory on top of what it uses: measured for a
16 x 576 TopK SAE, +33 MiB (1.5x of weights + Adam + batch instead of 1.3x). Fixing the
threshold (which also turns the adjustment off) makes blocks of 1 MiB and more mmapped, so they
return to the system when freed; the cost is the page faults of touching them afresh (the
TopK training step avoids most of them by reusing its gradients' memory from step to step:
monoscope/sae/step_memory.py).
"""

from __future__ import annotations

import ctypes
import sys

M_MMAP_THRESHOLD = -3  # mallopt parameter number in glibc's malloc.h
MMAP_THRESHOLD_BYTES = 1 << 20


def return_large_blocks_when_freed() -> bool:
    """Fix glibc's mmap threshold at 1 MiB for this process; False where malloc is not glibc's
    (other allocators are left as they are)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
