"""Background shard writer: serialises, checksums and records shards off the main thread.

The forward pass of the next batch runs while the previous shard is written. A shard is
recorded (in the manifest, or in its entry file in a multi-process harvest) only after it is
safely on disk, so no record ever names a shard that is not whole.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable


class ShardWriter:
    """Runs submitted writes one at a time, in order; `submit` them, then `close`."""

    def __init__(self, max_pending: int = 1) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._work, name="monoscope-shard-writer", daemon=True
        )
        self._thread.start()

    def submit(self, write: Callable[[], None]) -> None:
        """Queue one write (blocks while `max_pending` wait, bounding the shards held)."""
        self._raise_if_failed()
        self._queue.put(write)

    def close(self) -> None:
        """Wait for queued writes to finish; re-raise a writer failure here."""
        self._queue.put(None)
        self._thread.join()
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def _work(self) -> None:
        while (write := self._queue.get()) is not None:
            if self._error is not None:
                continue  # a shard failed: write nothing after it, keep draining the queue
            try:
                write()
            except BaseException as err:  # surfaced to the main thread by submit/close
                self._error = err
