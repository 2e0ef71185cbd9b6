"""Several processes on one job, through PyTorch's own engine: torchrun starts them and sets
RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; torch.distributed joins them (NCCL
between CUDA devices, gloo between CPUs). A process not started by torchrun is a world of one:
every helper here then does nothing, so single-process code paths stay as they are.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from monoscope.runtime import resolve_device


@dataclass(frozen=True)
class World:
    """This process's place among the job's processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes the job's shared files (checkpoints, manifests)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def launched_world() -> World:
    """The world torchrun's environment describes (a world of one without it)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size < 1:
        raise ValueError(f"WORLD_SIZE={size}: must be at least 1")
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    if not 0 <= rank < size:
        raise ValueError(f"RANK={rank} is outside WORLD_SIZE={size}")
    return World(rank, size, local)


def process_device(name: str, world: World) -> torch.device:
    """The device `--device NAME` means for this process: 'cuda' (or 'auto' on a CUDA
    machine) is the process's own GPU, cuda:LOCAL_RANK, when torchrun started several."""
    device = resolve_device(name)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", world.local_rank if world.distributed else 0)
    return device


def backend_for(device: torch.device) -> str:
    """NCCL between CUDA devices, gloo otherwise (CPUs; also what torchrun's tests use)."""
    return "nccl" if device.type == "cuda" else "gloo"


def join(device: torch.device) -> World:
    """Join the process group torchrun's environment describes, once (a no-op for a world of
    one, or when already joined); a CUDA process takes its LOCAL_RANK's device."""
    world = launched_world()
    if not world.distributed or dist.is_initialized():
        return world
    if device.type == "cuda":
        torch.cuda.set_device(world.local_rank)
    dist.init_process_group(backend_for(device), rank=world.rank, world_size=world.size)
    return world


def leave() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def joined(device: torch.device) -> Iterator[World]:
    """In the process group torchrun's environment describes, joined here unless it already
    was (then left as it is). Leaving after success waits for every process first: one that
    tears down its connections while another still closes its own has aborted the latter
    ("terminate called without an active exception"). After an error there is no wait: the
    others may be gone."""
    world = launched_world()
    owns = world.distributed and not dist.is_initialized()
    join(device)
    try:
        yield world
    except BaseException:
        if owns:
            leave()
        raise
    if owns:
        dist.barrier()
        leave()


def barrier() -> None:
    """Wait for every process (nothing to wait for in a world of one)."""
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over the processes in place (unchanged in a world of one)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(value: object, source: int = 0) -> object:
    """`value` as process `source` has it, on every process (picklable Python values made
    by this program only: never data read from files)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=source)
    return box[0]


def gather_objects(value: object) -> list[object]:
    """Every process's `value`, in rank order, on every process (as `broadcast_object`:
    values this program made, never data read from files)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [value]
    box: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(box, value)
    return box


def all_gather_cat(tensor: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Every process's `tensor` (of one shape in all), joined along `dim` in rank order."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim)
