"""Expected training time: a step's work on one rank, priced at rates measured on this machine,
or the run's throughput where the user gives it (--tokens-per-s).

A step's work on a rank (F latents and `rows` batch rows on it, width d):
- the encoder's dense matmul, 2·rows·d·F FLOPs, at the measured matmul rate: the one cost that
  grows with batch x features;
- the sparse rest, about 8·k·d FLOPs a row (the decode, the gradients of the k chosen entries
  a row: each a k·d product, forward or backward), at the matmul's rate, which sparse kernels do
  not reach: a lower bound. AuxK's d/2 entries a row, while latents are dead, are not counted;
- the passes over every weight: fused Adam, measured per parameter, times ADAM_PASSES;
- communication at --link-gb-s: data-parallel ranks all-reduce every gradient (a ring moves
  2(N-1)/N of its bytes a rank), feature-sharded ranks all-gather the candidates and all-reduce
  the [batch, d] partial decodes.
The steps run one after another: time = steps x the sum; the overlap a real run gets between
communication and compute, and its data loading, are not modelled.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from monoscope.plan.memory import CANDIDATE_BYTES, FLOAT, StepShape
from monoscope.runtime import parse_dtype

SPARSE_FLOPS_PER_ENTRY_AND_WIDTH = 8
ADAM_PASSES = 1.5
"""Adam's own pass, plus the step's others over the weights (forming both weight gradients,
W_dec's projection and renormalisation), which move about half as many bytes as Adam's."""
MATMUL_ROWS = 1024
MATMUL_COLUMNS = {"cpu": 2048, "mps": 8192, "cuda": 16384}
ADAM_PARAMETERS = {"cpu": 1 << 22, "mps": 1 << 24, "cuda": 1 << 26}


@dataclass(frozen=True)
class Rates:
    """What this machine's device did in a short measurement at a scaled-down shape."""

    device: str
    dtype: str
    matmul_shape: tuple[int, int, int]
    """(rows, d, columns) of the measured encoder matmul [rows, d] @ [d, columns]."""
    matmul_flops: float
    adam_parameters: int
    adam_seconds_per_parameter: float


@dataclass(frozen=True)
class StepTime:
    """Seconds of one step on a rank, by part (see the module's note)."""

    matmul: float
    sparse: float
    optimizer: float
    communication: float
    communication_bytes: int

    @property
    def total(self) -> float:
        return self.matmul + self.sparse + self.optimizer + self.communication


def measure(device: torch.device, shape: StepShape, compute_dtype: str, seconds: float) -> Rates:
    """Time the encoder's matmul (at most MATMUL_ROWS x d x MATMUL_COLUMNS of the rank's shape)
    and a fused Adam step (at most ADAM_PARAMETERS) on `device`, each for about `seconds`."""
    dtype = parse_dtype(compute_dtype)
    rows = min(shape.rows_per_rank, MATMUL_ROWS)
    columns = min(shape.features_per_rank, MATMUL_COLUMNS.get(device.type, 2048))
    d = shape.d_in
    generator = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(rows, d, generator=generator, device=device).to(dtype)
    w = torch.randn(d, columns, generator=generator, device=device).to(dtype)
    b = torch.zeros(columns, device=device, dtype=dtype)
    out = torch.empty(rows, columns, device=device, dtype=dtype)
    per_matmul = _seconds_per_call(lambda: torch.addmm(b, x, w, out=out), device, seconds)
    n = min(shape.parameters_per_rank, ADAM_PARAMETERS.get(device.type, 1 << 22))
    param = torch.nn.Parameter(torch.zeros(n, device=device))
    param.grad = torch.randn(n, generator=generator, device=device)
    adam = torch.optim.Adam([param], lr=1e-4, fused=True)
    per_adam = _seconds_per_call(adam.step, device, seconds)
    return Rates(
        device=str(device),
        dtype=compute_dtype,
        matmul_shape=(rows, d, columns),
        matmul_flops=2 * rows * d * columns / per_matmul,
        adam_parameters=n,
        adam_seconds_per_parameter=per_adam / n,
    )


def step_time(shape: StepShape, rates: Rates, link_bytes_per_s: float) -> StepTime:
    """One step on a rank of `shape`, priced at `rates` (see the module's note)."""
    rows, f, d = shape.rows_per_rank, shape.features_per_rank, shape.d_in
    n = shape.world_size
    if n == 1:
        moved = 0
    elif shape.shard_features:
        gathered = (n - 1) * shape.batch_size * shape.m * CANDIDATE_BYTES
        moved = gathered + 2 * (n - 1) * FLOAT * shape.batch_size * d // n
    else:
        moved = 2 * (n - 1) * FLOAT * shape.parameters_per_rank // n
    return StepTime(
        matmul=2 * rows * d * f / rates.matmul_flops,
        sparse=SPARSE_FLOPS_PER_ENTRY_AND_WIDTH * shape.k * d * rows / rates.matmul_flops,
        optimizer=ADAM_PASSES * shape.parameters_per_rank * rates.adam_seconds_per_parameter,
        communication=moved / link_bytes_per_s if moved else 0.0,
        communication_bytes=moved,
    )


def _seconds_per_call(call: Callable[[], object], device: torch.device, budget: float) -> float:
    """Mean seconds of `call` on `device` over at least 3 calls and `budget` seconds, after one
    warm-up call (kernel choice, first allocations)."""
    call()
    _synchronize(device)
    calls, start = 0, time.perf_counter()
    while True:
        call()
        calls += 1
        _synchronize(device)
        elapsed = time.perf_counter() - start
        if calls >= 3 and elapsed >= budget:
            return elapsed / calls


def _synchronize(device: torch.device) -> None:
    """Wait for the device's queued work: its kernels run asynchronously to the clock."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
