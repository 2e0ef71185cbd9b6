"""Background shard writer: serialises, checksums and records shards off the main thread.

The forward pass of the next batch runs while the previous shard is written. The manifest is
rewritten (atomically) only after its shard is safely on disk, so the manifest never lists a
shard that is not whole.
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path

from torch import Tensor

from monoscope.artifacts import write_sealed_json
from monoscope.harvest.shards import shard_name, write_shard
from monoscope.harvest.store import MANIFEST


class ShardWriter:
    """Owns the manifest while a harvest runs; `submit` shards in order, then `close`."""

    def __init__(self, folder: Path, manifest: dict, max_pending: int = 1) -> None:
        self.folder = folder
        self.manifest = manifest
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._work, name="monoscope-shard-writer", daemon=True
        )
        self._thread.start()

    def submit(
        self, tensors: dict[str, Tensor], n_contexts: int, norm_sums: dict[str, float]
    ) -> None:
        """Queue one shard (blocks while `max_pending` shards wait, bounding memory)."""
        self._raise_if_failed()
        self._queue.put((tensors, n_contexts, norm_sums))

    def close(self) -> None:
        """Wait for queued shards to be written; re-raise a writer failure here."""
        self._queue.put(None)
        self._thread.join()
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is not None:
                continue  # a shard failed: write nothing after it, keep draining the queue
            try:
                self._record(*item)
            except BaseException as err:  # surfaced to the main thread by submit/close
                self._error = err

    def _record(
        self, tensors: dict[str, Tensor], n_contexts: int, norm_sums: dict[str, float]
    ) -> None:
        m = self.manifest
        entry = write_shard(self.folder / shard_name(len(m["shards"])), tensors)
        entry["first_context"] = m["contexts"]
        entry["n_contexts"] = n_contexts
        entry["norm_sums"] = norm_sums
        m["shards"].append(entry)
        m["tokens"] += entry["tokens"]
        m["contexts"] += n_contexts
        for site, info in m["sites"].items():
            total = sum(s["norm_sums"][site] for s in m["shards"])
            info["mean_norm"] = total / m["tokens"]
        write_sealed_json(self.folder / MANIFEST, m)
