"""`prefetched`: batches read on a background thread and moved to the training device ahead of
the step that needs them.

Reading a batch from the store (and widening bfloat16 to float32) then overlaps the step on the
device. On CUDA the batch is pinned and copied asynchronously; on the CPU the trainer reads
inline by default, where a thread would take cores from the step and hold another batch.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Generator, Iterator

import torch
from torch import Tensor

_POLL_SECONDS = 0.1  # how often a blocked reader checks whether the loop has stopped
_END = object()


def to_device(batch: Tensor, device: torch.device) -> Tensor:
    """`batch` on `device`: pinned and copied asynchronously to CUDA (the copy is ordered on
    the current stream, before the step's kernels that read it)."""
    if batch.device == device:
        return batch
    if device.type == "cuda":
        return batch.pin_memory().to(device, non_blocking=True)
    return batch.to(device)


def prefetched(
    batches: Iterator[Tensor], device: torch.device, ahead: int
) -> Generator[Tensor, None, None]:
    """`batches` on `device`, in order; with `ahead` > 0, read up to that many batches ahead
    on a background thread. An error in the reader is raised here, at the batch it stopped
    at; closing this iterator (the loop ended) stops the reader."""
    if ahead <= 0:
        for batch in batches:
            yield to_device(batch, device)
        return
    ready: queue.Queue = queue.Queue(maxsize=ahead)
    stop = threading.Event()
    thread = threading.Thread(
        target=_read, args=(batches, device, ready, stop), daemon=True, name="prefetch"
    )
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


def _read(
    batches: Iterator[Tensor], device: torch.device, ready: queue.Queue, stop: threading.Event
) -> None:
    """The reader thread: puts each batch (on `device`), then _END, or the error it met."""
    try:
        for batch in batches:
            if not _put(ready, to_device(batch, device), stop):
                return
        _put(ready, _END, stop)
    except BaseException as err:  # handed to the loop, which raises it
        _put(ready, err, stop)


def _put(ready: queue.Queue, item: object, stop: threading.Event) -> bool:
    """Put `item` unless the loop stopped meanwhile; whether it was put."""
    while not stop.is_set():
        try:
            ready.put(item, timeout=_POLL_SECONDS)
            return True
        except queue.Full:
            continue
    return False
