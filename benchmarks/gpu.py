"""TopK training-step throughput on a GPU (or the CPU) against the device's own matmul of the
encoder's shape, measured in the same run (issue 24).

For each size (features x d, k, compute dtype): the trainer's inner step as monoscope.train
runs it (`training_step`, backward, `apply_gradients` with fused Adam and the deferred W_enc
gradient in a `StepMemory`, the decoder rows renormalised), on a batch of `--batch` Gaussian
rows (default 4096), timed over `--steps` steps after a warm-up, best of `--repeats`. Its
bound is one dense matmul of the encoder's shape, [batch, d] @ [d, features], in the dtype the
step chooses the latents in (float32, or bfloat16 with compute dtype bfloat16), timed just
before on the same device: `bound share` = matmul time / step time (1.0 would be a step as
fast as that one product). On CUDA every timing is bracketed by torch.cuda.synchronize();
fp32 matmuls run as torch is set (TF32 off unless torch.backends.cuda.matmul.allow_tf32 is
set: the line says which). The SAE starts as the trainer's initialisation does (random unit
decoder rows, the encoder their transpose, biases 0), built on the device; `--dead` marks a
share of the latents dead, so that AuxK runs as it does once latents die.

A size that does not fit is a line saying so: one whose estimated need (weights, Adam's two
moments, one weight gradient, the batch and the bound's [batch, features] output) exceeds the
device's free memory is skipped before allocating, and an out-of-memory error is caught.

Run from the repository root:
    python benchmarks/gpu.py                          # the grid below, on CUDA when present
    python benchmarks/gpu.py --features 1048576 --d 4096 --k 32 --dtypes bfloat16
    python benchmarks/gpu.py --device cpu --features 16384 --d 576 --k 32   # the CPU path
Defaults: --features 16384,65536,262144,1048576 --d 576,2048,4096 --k 32,64
--dtypes float32,bfloat16 on CUDA; on the CPU --features 16384 --d 576 unless given.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run from a checkout without installing the package

import torch  # noqa: E402

from monoscope.runtime import configure_threads, resolve_device  # noqa: E402
from monoscope.sae import SAEConfig  # noqa: E402
from monoscope.sae.build import empty_sae  # noqa: E402
from monoscope.sae.step_memory import StepMemory  # noqa: E402
from monoscope.sae.topk import AUXK_COEFFICIENT  # noqa: E402
from monoscope.train.memory import return_large_blocks_when_freed  # noqa: E402
from monoscope.train.step import apply_gradients  # noqa: E402

GPU_FEATURES, GPU_D = "16384,65536,262144,1048576", "576,2048,4096"
CPU_FEATURES, CPU_D = "16384", "576"
GIB = 2**30


@dataclass(frozen=True)
class Size:
    features: int
    d: int
    k: int
    dtype: str  # the SAE's compute dtype: float32 or bfloat16

    def label(self) -> str:
        return f"{self.features:>9,} x {self.d:<5} {self.k:<4} {self.dtype:<9}"

    def bytes_needed(self, batch: int) -> int:
        """About what a step needs: weights, Adam's two moments and one weight gradient
        (W_enc's is formed in W_dec's memory), the batches and the bound's output."""
        weights = 2 * self.features * self.d * 4
        return int(3.5 * weights) + 8 * batch * self.d * 4 + batch * self.features * 4


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, reps: int) -> float:
    """Seconds of one call of fn, the mean of `reps` calls, the device synchronised around."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / reps


def free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def matmul_seconds(size: Size, batch: int, device: torch.device, reps: int) -> float:
    """One [batch, d] @ [d, features] product in the dtype the step selects in, into one
    output reused (best of 3 means of `reps`)."""
    dtype = torch.bfloat16 if size.dtype == "bfloat16" else torch.float32
    x = torch.randn(batch, size.d, device=device, dtype=dtype)
    w = torch.randn(size.d, size.features, device=device, dtype=dtype)
    out = torch.mm(x, w)  # warm-up

    def product() -> None:
        torch.mm(x, w, out=out)

    return min(timed(product, device, reps) for _ in range(3))


def make_sae(size: Size, device: torch.device):
    """A TopK SAE built on `device`, started as `reset_parameters` starts it (random unit
    decoder rows, the encoder their transpose, biases 0)."""
    cfg = SAEConfig(
        arch="topk", d_in=size.d, n_features=size.features, k=size.k, compute_dtype=size.dtype
    )
    with torch.device(device):
        sae = empty_sae(cfg)
    gen = torch.Generator(device).manual_seed(0)
    with torch.no_grad():
        sae.W_dec.normal_(generator=gen)
        sae.W_dec.div_(sae.W_dec.norm(dim=-1, keepdim=True))
        sae.W_enc.copy_(sae.W_dec.t())
    return sae


def step_seconds(
    size: Size, args: argparse.Namespace, device: torch.device
) -> tuple[float, float | None]:
    """(seconds per training step, peak device memory in GiB or None on the CPU)."""
    sae = make_sae(size, device)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-4, fused=True)
    sae.step_memory = StepMemory()  # as the trainer's loop lends it
    gen = torch.Generator(device).manual_seed(1)
    data = [torch.randn(args.batch, size.d, device=device, generator=gen) for _ in range(4)]
    dead = torch.rand(size.features, device=device, generator=gen) < args.dead
    batches = itertools.cycle(data)

    def step() -> None:
        x = next(batches)
        out = sae.training_step(x, AUXK_COEFFICIENT, dead_mask=dead)
        out.loss.backward()
        apply_gradients(sae, opt, out, 1.0)
        sae.after_optimizer_step()

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    best = min(timed(step, device, args.steps) for _ in range(args.repeats))
    peak = torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None
    return best, peak


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure(size: Size, args: argparse.Namespace, device: torch.device) -> str:
    """The result line of one size, or the line saying why it was not measured."""
    need, free = size.bytes_needed(args.batch), free_bytes(device)
    if need > free:
        return (
            f"{size.label()} does not fit: needs about {need / GIB:.1f} GiB, "
            f"{free / GIB:.1f} GiB free on {device}"
        )
    try:
        bound = matmul_seconds(size, args.batch, device, args.steps)
        release(device)
        seconds, peak = step_seconds(size, args, device)
    except (torch.OutOfMemoryError, MemoryError) as err:
        return f"{size.label()} does not fit: out of memory ({str(err).splitlines()[0]})"
    finally:
        release(device)
    peak_text = f"{peak:8.2f}" if peak is not None else f"{'-':>8}"
    return (
        f"{size.label()} {seconds * 1e3:10.2f} {args.batch / seconds:12,.0f} "
        f"{bound * 1e3:10.2f} {bound / seconds:7.2f} {peak_text}"
    )


def ints(text: str) -> list[int]:
    """'16384,65536' -> [16384, 65536] (whole numbers: 1M would be 10**6, not 2**20)."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not comma-separated whole numbers: {text!r}") from None
    if min(values) < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive: {text!r}")
    return values


def dtypes(text: str) -> list[str]:
    names = text.split(",")
    if not set(names) <= {"float32", "bfloat16"}:
        raise argparse.ArgumentTypeError(f"compute dtypes are float32 and bfloat16: {text!r}")
    return names


def sizes(args: argparse.Namespace, device: torch.device) -> list[Size]:
    on_gpu = device.type != "cpu"
    features = args.features or ints(GPU_FEATURES if on_gpu else CPU_FEATURES)
    widths = args.d or ints(GPU_D if on_gpu else CPU_D)
    return [
        Size(f, d, k, dtype)
        for d in widths
        for f in features
        for k in args.k
        for dtype in args.dtypes
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--features", type=ints, help="comma-separated latent counts")
    parser.add_argument("--d", type=ints, help="comma-separated input widths")
    parser.add_argument("--k", type=ints, default="32,64", help="comma-separated k values")
    parser.add_argument(
        "--dtypes", type=dtypes, default="float32,bfloat16", help="compute dtypes to time"
    )
    parser.add_argument("--batch", type=int, default=4096, help="rows per step")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many repeats")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--dead", type=float, default=0.0, help="share of latents marked dead")
    args = parser.parse_args()
    try:
        device = resolve_device(args.device)
    except ValueError as err:
        raise SystemExit(f"benchmarks/gpu.py: {err}") from None
    if device.type == "cpu":
        configure_threads()
        return_large_blocks_when_freed()  # as `monoscope train` does on the CPU
        where = f"the CPU ({torch.get_num_threads()} threads)"
    elif device.type == "cuda":
        tf32 = "on" if torch.backends.cuda.matmul.allow_tf32 else "off"
        where = f"{torch.cuda.get_device_name(device)} (TF32 {tf32})"
    else:
        where = str(device)
    print(f"TopK training step on {where}, batch {args.batch}, {args.dead:.0%} dead latents")
    print(
        f"{'features':>9} x {'d':<5} {'k':<4} {'dtype':<9} {'step ms':>10} {'tokens/s':>12} "
        f"{'matmul ms':>10} {'bound':>7} {'peak GiB':>8}"
    )
    for size in sizes(args, device):
        print(measure(size, args, device), flush=True)


if __name__ == "__main__":
    main()
