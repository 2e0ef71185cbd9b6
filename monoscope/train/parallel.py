"""Data-parallel training: every process holds the whole SAE and an equal slice of each batch.

Each process's loss is its share of the whole batch's (monoscope.sae.shares), so the sum of the
processes' gradients (an all-reduce) is the whole batch's gradient: every process then takes
the same Adam step and the SAEs stay equal without being sent again. What steers the run — the
step's figures (divergence check, L0 controller, logs), which latents fired (dead-latent
counters, AuxK), a stop request — is summed too, so every process decides alike. A run in
several processes gives the SAE a one-process run with the same global batch gives, within the
rounding of the sums' order (tests/unit/test_train_parallel.py states the tolerance).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch
import torch.distributed as dist
from torch import Tensor

from monoscope.distributed import World, all_gather_cat, all_reduce_sum_, broadcast_object
from monoscope.sae import SparseAutoencoder, TrainStep
from monoscope.sae.registry import archs_where, trained_class
from monoscope.sae.shares import BatchShares


def check_data_parallel(world: World, arch: str, batch_size: int, streaming: bool) -> None:
    """ValueError for a run that cannot be split over `world`'s processes as asked."""
    if not world.distributed:
        return
    if not trained_class(arch).data_parallel:
        splits = archs_where(lambda cls: cls.data_parallel)
        raise ValueError(
            f"training {arch} in {world.size} processes is not supported yet (its training "
            f"step does not split over slices of the batch): use one process, or {splits}"
        )
    if batch_size % world.size:
        raise ValueError(
            f"--batch-size {batch_size} does not split into {world.size} equal slices: use a "
            f"multiple of {world.size}"
        )
    if streaming:
        raise ValueError("--stream-model trains in one process: harvest a store for torchrun")


def share_batches(sae: SparseAutoencoder, world: World) -> None:
    """Make `sae`'s training steps return their share of the whole batch's loss."""
    if world.distributed:
        sae.batch_shares = BatchShares(world.size, all_reduce_sum_, all_gather_cat)


def slice_of(batch: Tensor, world: World) -> Tensor:
    """This process's rows of the whole batch [batch_size, d]: its own tensor (the trainer
    rotates it in place), not a view holding the whole batch alive."""
    if not world.distributed:
        return batch
    rows = batch.shape[0] // world.size
    return batch[world.rank * rows : (world.rank + 1) * rows].clone()


def broadcast_parameters(module: torch.nn.Module, tensors: list[Tensor], world: World) -> None:
    """Process 0's parameters, buffers and `tensors`, in every process: a start computed on
    each is the same anyway, but this makes it so whatever the machines' rounding."""
    broadcast_tensors([*module.state_dict().values(), *tensors], world)


@torch.no_grad()
def broadcast_tensors(tensors: list[Tensor], world: World) -> None:
    """Process 0's `tensors`, in place in every process."""
    if not world.distributed:
        return
    for tensor in tensors:
        dist.broadcast(tensor, src=0)


@torch.no_grad()
def sum_gradients(params: list[Tensor]) -> None:
    """Every parameter's gradient summed over the processes, in one all-reduce. A parameter
    with a gradient in some process only gets zeros in the others; one with none anywhere
    keeps none (Adam then skips it, as in one process)."""
    has = [p.grad is not None for p in params]
    anywhere = all_reduce_sum_(torch.tensor(has, dtype=torch.int32, device=params[0].device))
    for param, count in zip(params, anywhere.tolist(), strict=True):
        if count and param.grad is None:
            param.grad = torch.zeros_like(param)
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    all_reduce_sum_(flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


@torch.no_grad()
def summed_step(result: TrainStep, world: World) -> TrainStep:
    """The step's figures for the whole batch: each process's shares summed, and the latents
    that fired in any process; its loss is detached (backpropagate the share's)."""
    if not world.distributed:
        return result
    figures = torch.stack(
        [t.detach().to(torch.float64) for t in (result.mse, result.sparsity, result.l0, result.fvu)]
    )
    figures = torch.cat([figures, result.loss.detach().to(torch.float64).view(1)])
    fired = result.fired.to(torch.int32)
    all_reduce_sum_(figures)
    all_reduce_sum_(fired)
    mse, sparsity, l0, fvu, loss = figures.to(result.mse.dtype)
    return replace(result, loss=loss, mse=mse, sparsity=sparsity, l0=l0, fvu=fvu, fired=fired > 0)


def agreed_stop(stop: str | None, world: World, device: torch.device) -> str | None:
    """A stop requested in any process (SIGTERM reaches each at its own step), in all."""
    if not world.distributed:
        return stop
    flag = torch.tensor([1 if stop else 0], device=device)
    all_reduce_sum_(flag)
    return (stop or "a stop request in another process") if int(flag) else None


def run_on_main(world: World, action: Callable[[], object]) -> None:
    """Run `action` in process 0 while the others wait; its ValueError or OSError is raised
    in every process (the others with its message), so none waits for a process that quit."""
    error: Exception | None = None
    if world.is_main:
        try:
            action()
        except (ValueError, OSError) as err:
            error = err
    message = broadcast_object(None if error is None else str(error))
    if error is not None:
        raise error
    if message is not None:
        raise ValueError(f"process 0: {message}")
