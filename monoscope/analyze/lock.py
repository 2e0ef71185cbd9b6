"""One writer per feature store: an exclusive lock on a file beside it, holding the writer's pid.

flock is released by the kernel when the process dies, so a killed run leaves no stale lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from monoscope.analyze.schema import FeatureStoreError


def lock_path(db: Path) -> Path:
    return db.with_name(db.name + ".lock")


@contextlib.contextmanager
def writer_lock(db: Path) -> Iterator[None]:
    """Hold the store's writer lock; FeatureStoreError naming the holder if another has it."""
    path = lock_path(db)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise FeatureStoreError(
                f"{db} is being written by another `monoscope analyze` (pid {holder}); wait for "
                "it to finish or stop it, then rerun"
            ) from None
        # The holder before us may have removed the file after we opened it: then our lock is
        # on a file nobody else will open, and we must lock the one at the path.
        if os.path.exists(path) and os.stat(path).st_ino == os.fstat(fd).st_ino:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)
