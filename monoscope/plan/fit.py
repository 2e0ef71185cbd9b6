"""Whether a training step fits a device's memory, and what to change when it does not.

A step is asked to leave HEADROOM of the memory free: on a GPU the CUDA context and the caching
allocator's fragmentation take some, on the CPU the process's other memory (the Python heap, the
libraries) does.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from monoscope.plan.config import PLANNED_ARCHS
from monoscope.plan.memory import FLOAT, MemoryPlan, StepShape, memory_plan, parameters
from monoscope.plan.sizes import count, gib
from monoscope.sae.batchtopk import CANDIDATES_PER_K
from monoscope.sae.topk import TopKFamilySAE
from monoscope.sae.training import DEFAULT_K

HEADROOM = 0.1
"""Share of a device's memory a plan leaves free."""
MAX_RANKS = 1 << 16
MIN_BATCH = 2  # train's smallest: a batch's FVU needs two rows
LOWER_BOUND_PARTS = ("weights", "adam", "gradients", "auxk")
"""What any architecture's step holds (auxk: as large as the second weight gradient a dense
step forms)."""


class DoesNotFitError(ValueError):
    """A training configuration whose step needs more memory than the device has."""


def usable(total: int) -> int:
    return int(total * (1 - HEADROOM))


def required(plan: MemoryPlan, dense: bool = False) -> int:
    """Bytes a rank needs: the step's peak (a checkpoint is written from the tensors where they
    are, a piece at a time: it adds nothing)."""
    return plan.dense_peak if dense else plan.peak


def device_memory(device: torch.device) -> tuple[int, str]:
    """(bytes the device offers, how that was read): a CUDA device's total memory, MPS's
    recommended maximum, the CPU's available RAM."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return int(props.total_memory), f"{props.name}'s total memory"
    if device.type == "mps":
        return int(torch.mps.recommended_max_memory()), "MPS's recommended maximum"
    return available_ram(), "available RAM"


def available_ram() -> int:
    """The kernel's estimate of memory available without swapping (MemAvailable), else the
    free pages."""
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_fits(
    n_features: int,
    d_in: int,
    batch_size: int,
    device: torch.device,
    world_size: int = 1,
    shard_features: bool = False,
    *,
    k: int = DEFAULT_K,
    arch: str = "topk",
    compute_dtype: str = "float32",
    store_dtype: str = "float32",
    can_shard: bool = True,
) -> MemoryPlan:
    """Refuse up front a training run whose step cannot fit `device` on each of `world_size`
    ranks: DoesNotFitError naming the need, the memory and what to change (sharding the
    dictionary only where `can_shard`); otherwise the plan.

    The TopK family's step is counted whole. Other architectures' dense steps are not
    modelled: for them the parts every step holds (weights, Adam, two weight gradients) are
    checked, a lower bound, so that a refusal is still sure. On the CPU the ranks are processes
    sharing this machine's RAM."""
    shape = StepShape(
        n_features,
        d_in,
        batch_size,
        k,
        world_size,
        shard_features,
        candidates_per_row(arch, k, n_features),
        compute_dtype,
        store_dtype,
    )
    plan = memory_plan(shape)
    total, what = device_memory(device)
    on_cpu = device.type == "cpu"
    sharing = world_size if on_cpu else 1
    modelled = arch in PLANNED_ARCHS
    need = required(plan) if modelled else sum(map(plan.part, LOWER_BOUND_PARTS))
    if need * sharing <= usable(total):
        return plan
    fixes = []
    if modelled:
        budget = usable(total) // sharing
        fixes = suggestions(
            shape, budget, ranks_flag="--nproc", more_ranks=not on_cpu, can_shard=can_shard
        )
    advice = " or ".join(fixes) if fixes else "fewer --features, or a device with more memory"
    shared = f", {world_size} ranks sharing it" if sharing > 1 else ""
    raise DoesNotFitError(
        f"a {arch} SAE of {n_features:,} features x d {d_in:,} at batch {batch_size:,} needs "
        f"{'at least ' * (not modelled)}{gib(need)} per rank ({layout(shape)}), the device "
        f"{device} has {gib(total)} ({what}{shared}; {HEADROOM:.0%} kept free): use {advice}"
    )


def gather_bytes(n_features: int, d_in: int) -> int:
    """Host RAM process 0 of a feature-sharded run needs for the whole SAE: it gathers the
    float32 weights once to save them (each process starts its own slice, and the file is
    written from the weights, never built beside them)."""
    return FLOAT * parameters(n_features, d_in)


def check_gather_fits(n_features: int, d_in: int) -> int:
    """Refuse up front a feature-sharded run whose whole SAE process 0 cannot hold in this
    machine's RAM (`gather_bytes`); the bytes needed otherwise."""
    need, total = gather_bytes(n_features, d_in), available_ram()
    if need > usable(total):
        raise DoesNotFitError(
            f"a feature-sharded SAE of {n_features:,} features x d {d_in:,} is gathered whole "
            f"in process 0's RAM to save it: {gib(need)}, and this machine "
            f"has {gib(total)} available ({HEADROOM:.0%} kept free): use fewer --features, or a "
            "machine with more RAM for process 0"
        )
    return need


def candidates_per_row(arch: str, k: int, n_features: int) -> int:
    """m: the candidates each row offers the selection (BatchTopK's choose among more)."""
    if arch == "batchtopk":
        return min(n_features, CANDIDATES_PER_K * k)
    return k


def layout(shape: StepShape) -> str:
    n = shape.world_size
    if shape.shard_features:
        return f"dictionary sharded over {n} rank{'s' * (n > 1)}"
    return "dictionary on every rank" if n > 1 else "one rank"


def suggestions(
    shape: StepShape,
    budget: int,
    ranks_flag: str = "--gpus",
    more_ranks: bool = True,
    can_shard: bool = True,
) -> list[str]:
    """Changes, each alone, that bring the rank's need under `budget` bytes: sharding the
    dictionary where `can_shard` (over the same ranks, or with `more_ranks` over more:
    `ranks_flag` N), a smaller batch, fewer features."""

    def fits(s: StepShape) -> bool:
        return required(memory_plan(s)) <= budget

    def need(s: StepShape) -> str:
        return gib(required(memory_plan(s)))

    out = []
    sharded = replace(shape, shard_features=True)
    if can_shard and not shape.shard_features and shape.world_size > 1 and fits(sharded):
        out.append(f"--shard-features ({need(sharded)} per rank)")
    elif can_shard and more_ranks and (n := _fewest_ranks(sharded, fits)) is not None:
        out.append(
            f"--shard-features {ranks_flag} {n} ({need(replace(sharded, world_size=n))} per rank)"
        )
    batch = shape.batch_size // 2
    while batch >= MIN_BATCH and not fits(replace(shape, batch_size=batch)):
        batch //= 2
    if batch >= MIN_BATCH:
        out.append(f"--batch-size {batch} ({need(replace(shape, batch_size=batch))} per rank)")
    features = _most_features(shape, fits)
    if features:
        out.append(f"--features {features:,} ({count(features)})")
    return out


def _fewest_ranks(shape: StepShape, fits: Callable[[StepShape], bool]) -> int | None:
    """The fewest ranks above `shape`'s over which the sharded step fits (None: none up to
    MAX_RANKS); the need falls as 1/N until the gathered candidates' N-fold growth shows."""
    low, high = shape.world_size, shape.world_size + 1
    while not fits(replace(shape, world_size=high)):
        if high >= MAX_RANKS:
            return None
        low, high = high, min(2 * high, MAX_RANKS)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if fits(replace(shape, world_size=mid)) else (mid, high)
    return high


def _most_features(shape: StepShape, fits: Callable[[StepShape], bool]) -> int:
    """The most features that fit (0: none), a multiple of the selection's column block on
    each rank, which keeps its buffer within the residual's memory (memory.py)."""
    unit = TopKFamilySAE.column_block * (shape.world_size if shape.shard_features else 1)
    low, high = 0, shape.n_features // unit + 1
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(replace(shape, n_features=mid * unit)) else (low, mid)
    return low * unit
