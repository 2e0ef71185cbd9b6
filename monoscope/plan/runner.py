"""`run`: a plan of an SAE run, its memory per rank, store, time and fit, before it is spent."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from monoscope.plan.config import PlanConfig
from monoscope.plan.fit import candidates_per_row, device_memory, required, suggestions, usable
from monoscope.plan.memory import MemoryPlan, StepShape, memory_plan
from monoscope.plan.sizes import parse_memory
from monoscope.plan.store import store_bytes
from monoscope.plan.throughput import Rates, StepTime, measure, step_time
from monoscope.plan.width import Width, site_width
from monoscope.runtime import resolve_device


@dataclass(frozen=True)
class Memory:
    """Each GPU's memory, where the figure came from, and whether the plan fits it."""

    total: int
    source: str
    fits: bool
    dense_fits: bool
    fixes: list[str]


@dataclass(frozen=True)
class Estimate:
    """The run's expected duration: from a given throughput, or from measured rates."""

    seconds: float
    tokens_per_s: float
    rates: Rates | None
    step: StepTime | None


@dataclass(frozen=True)
class Plan:
    cfg: PlanConfig
    width: Width
    shape: StepShape
    data_parallel: MemoryPlan
    sharded: MemoryPlan
    store: tuple[int, int]
    """(bytes of the rows, bytes of the shards' headers and manifest)."""
    time: Estimate
    memory: Memory | None
    """None when no GPU memory was given and this machine has no GPU."""

    @property
    def chosen(self) -> MemoryPlan:
        return self.sharded if self.cfg.shard_features else self.data_parallel


def run(cfg: PlanConfig) -> Plan:
    """Plan the run `cfg` describes (see the modules' notes for what each figure counts)."""
    width = site_width(cfg.model, cfg.site, cfg.d_model)
    n_features = cfg.n_features(width.d)
    if cfg.k > n_features:
        raise ValueError(f"--k {cfg.k} is larger than the number of features {n_features}")
    shape = StepShape(
        n_features,
        width.d,
        cfg.batch_size,
        cfg.k,
        cfg.gpus,
        cfg.shard_features,
        candidates_per_row(cfg.arch, cfg.k, n_features),
        cfg.compute_dtype,
        cfg.store_dtype,
    )
    device = None if cfg.tokens_per_s else resolve_device(cfg.device)
    return Plan(
        cfg=cfg,
        width=width,
        shape=shape,
        data_parallel=memory_plan(replace(shape, shard_features=False)),
        sharded=memory_plan(replace(shape, shard_features=True)),
        store=store_bytes(cfg.tokens, width.d, cfg.store_dtype),
        time=_estimate(cfg, shape, device),
        memory=_memory(cfg, shape),
    )


def _estimate(cfg: PlanConfig, shape: StepShape, device: torch.device | None) -> Estimate:
    if cfg.tokens_per_s:
        return Estimate(cfg.tokens / cfg.tokens_per_s, cfg.tokens_per_s, None, None)
    assert device is not None  # resolved whenever no throughput is given
    rates = measure(device, shape, cfg.compute_dtype, cfg.measure_seconds)
    step = step_time(shape, rates, cfg.link_gb_s * 1e9)
    tokens_per_s = shape.batch_size / step.total
    return Estimate(cfg.tokens / tokens_per_s, tokens_per_s, rates, step)


def _memory(cfg: PlanConfig, shape: StepShape) -> Memory | None:
    """The fit against --gpu-mem, or this machine's GPU when none is given (None without)."""
    if cfg.gpu_mem is not None:
        total, source = parse_memory(cfg.gpu_mem), "--gpu-mem"
    elif torch.cuda.is_available():
        total, source = device_memory(torch.device("cuda"))
    else:
        return None
    plan = memory_plan(shape)
    budget = usable(total)
    fits = required(plan) <= budget
    dense_fits = required(plan, dense=True) <= budget
    fixes = [] if fits else suggestions(shape, budget)
    return Memory(total, source, fits, dense_fits, fixes)
