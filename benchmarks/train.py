"""SAE training throughput against the machine's matmul bound, measured in the same run.

Workload (issue "SAE training"): the built-in model's middle layer (d = 576), batch 4096,
fp32, the threads torch uses here (2 on this machine):
- `topk`: k = 32, 16 x d = 9,216 features. Its bound is one dense matmul of the encoder's
  shape ([4096, 576] @ [576, 9216]) per step: every other cost (sparse decoder, sparse
  backward, Adam, the batch's rotation into Adam's eigenbasis) should be small next to it.
  Target: >= 75% of the bound. `topk std` is the same step without the rotation
  (`--adam-basis standard`). Both zero the Adam momentum of latents without a gradient, as the
  trainer's topk default does (`--idle-momentum reset`).
- `relu`: dense by nature; its bound is three matmuls of that shape. Target: >= 60%.
- `topk bf16`: the topk step with `compute_dtype="bfloat16"` (the latents chosen by a bfloat16
  matmul; values, loss, gradients and Adam in fp32), against the fp32 step.
- `topk avg`: the topk step with `--weight-average` (an exponential average of the parameters
  updated after each step, one more copy of them): its cost in time and memory;
- peak memory of a training process against weights + Adam state + one batch (target <= 1.5x),
  measured in a child process after a warm-up (see `_PEAK_CHILD`); the cold figure includes
  the process's one-off costs too;
- `topk refit`: `--refit-decoder`'s pass and solve over the quality benchmark's 48 batches
  (196k tokens) of Gaussian data, with the topk SAE: its time, and its peak memory against the
  same weights + Adam + batch (the refit runs once training is done, without Adam's state; its
  kept codes grow with the tokens, 6 bytes a code).

The matmul bound is measured in this run, interleaved with the training steps (best of
repeats), because the machine is shared and noisy. It is the issue's plain `x @ w`, whose
151 MB output is mapped and faulted in afresh every call (~40 ms of ~270 here); the same
matmul into a reused output, and topk's ratio against it, are printed too. Each SAE starts
as the trainer starts it (topk: b_dec at the median, the decoder shaped by the data, the
encoder's scale fitted), and each step gets its own copy of its batch, untimed, as the
trainer's sources give one: the step rotates it in place, and which latents fire (so how the
sparse products walk memory) depends on the data and the weights. Activations come from an
activation store when --acts is given (e.g. runs/demo/acts from `monoscope demo`), otherwise
Gaussian data of the same shape (which fires other latents than real activations: report
figures from a store).

Run from the repository root:
    python benchmarks/train.py [--acts runs/demo/acts] [--steps 6] [--repeats 5]
        [--against sparsify]
With --against sparsify (installed: `pip install eai-sparsify==1.3.3 schedulefree`), sparsify's
own step is timed on the same batches, in fp32 and under bf16 autocast, and our topk steps are
given as multiples of it (targets: >= 2x its fp32 step in fp32, >= 3x in bf16).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run from a checkout without installing the package

import torch  # noqa: E402

from monoscope.runtime import configure_threads  # noqa: E402
from monoscope.sae import SAEConfig, build_sae  # noqa: E402
from monoscope.sae.step_memory import StepMemory  # noqa: E402
from monoscope.train.average import WeightAverage  # noqa: E402
from monoscope.train.basis import Rotation, rotate_sae  # noqa: E402
from monoscope.train.config import TrainConfig  # noqa: E402
from monoscope.train.idle import IdleMomentumReset  # noqa: E402
from monoscope.train.memory import return_large_blocks_when_freed  # noqa: E402
from monoscope.train.refit import refit_decoder  # noqa: E402
from monoscope.train.start import start_from_sample  # noqa: E402
from monoscope.train.step import apply_gradients  # noqa: E402

D, BATCH, K = 576, 4096, 32
N_FEATURES = 16 * D


def batches(acts: str | None, n: int) -> list[torch.Tensor]:
    if acts:
        from monoscope.harvest import ActivationStore

        it = ActivationStore(acts).batches(BATCH, seed=0, drop_last=True)
        got = [b for _, b in zip(range(n), it, strict=False)]
        if len(got) == n:
            return got
        print(f"(store has fewer than {n} batches: cycling them)")
        return [got[i % len(got)] for i in range(n)]
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(BATCH, D, generator=gen) * 7 for _ in range(n)]


def matmul_seconds(reps: int, reuse_output: bool = False) -> float:
    """Seconds of one [BATCH, D] @ [D, N_FEATURES] matmul: plain (`x @ w`, the issue's bound:
    its 151 MB output is mapped and faulted in afresh each call, as in any process, glibc's
    mmap threshold being at most 32 MiB), or into one output reused (`reuse_output`)."""
    x, w = torch.randn(BATCH, D), torch.randn(D, N_FEATURES)
    out = torch.mm(x, w)  # warm-up
    start = time.perf_counter()
    for _ in range(reps):
        if reuse_output:
            torch.mm(x, w, out=out)
        else:
            x @ w
    return (time.perf_counter() - start) / reps


class Trainer:
    """The trainer's inner step (same calls as monoscope.train.run), without I/O."""

    def __init__(
        self,
        arch: str,
        data: list[torch.Tensor],
        n_features: int = N_FEATURES,
        compute_dtype: str = "float32",
        adam_basis: str | None = None,
        weight_average: bool = False,
    ) -> None:
        return_large_blocks_when_freed()  # as monoscope.train.run does
        k = K if arch in ("topk", "batchtopk") else None
        cfg = SAEConfig(arch=arch, d_in=D, n_features=n_features, k=k, compute_dtype=compute_dtype)
        self.sae = build_sae(cfg, seed=0)
        defaults = TrainConfig(arch=arch, adam_basis=adam_basis).resolved()
        # Started as the trainer starts them: which latents fire, and so how the sparse
        # products walk memory, depends on it.
        start_from_sample(self.sae, defaults, data[0])
        self.rotation = None  # as the trainer: topk's default basis for Adam is the eigenbasis
        if defaults.adam_basis == "eigen":
            self.rotation = Rotation.eigen(data[0])
            rotate_sae(self.sae, self.rotation.matrix())
        self.opt = torch.optim.Adam(self.sae.parameters(), lr=1e-4, fused=True)
        self.sae.step_memory = StepMemory()  # as the trainer's loop lends it (and the
        # loop below, like the trainer's, drops each step's gradients and batch)
        reset = defaults.idle_momentum == "reset"
        self.reset_idle = IdleMomentumReset(self.sae, self.opt) if reset else None
        # --weight-average: one more copy of the parameters, updated after every step.
        self.average = WeightAverage(self.sae, 10.0) if weight_average else None
        self.coefficient = 5.0 if arch == "relu" else 1 / 32
        self.dead = torch.zeros(n_features, dtype=torch.bool)
        self.data = data

    def steps(self) -> float:
        seconds = 0.0
        for batch in self.data:
            # A fresh batch each step, as the trainer's sources give it (untimed): rotated in
            # place below, and the data shared by every variant and repeat stays as read.
            x = batch.clone()
            start = time.perf_counter()
            if self.rotation is not None:
                x = self.rotation.apply_(x)
            out = self.sae.training_step(x, self.coefficient, dead_mask=self.dead)
            out.loss.backward()
            apply_gradients(self.sae, self.opt, out, 1.0, self.reset_idle)
            self.sae.after_optimizer_step()
            if self.average is not None:
                self.average.update(self.sae)
            seconds += time.perf_counter() - start
            del x, out  # as the trainer: this step's batch is gone before the next one comes
        return seconds / len(self.data)


class SparsifyTrainer:
    """EleutherAI sparsify's training step with its trainer's defaults (k 32, sign SGD in
    schedule-free averaging, decoder rows renormalised before the step and their gradients'
    parallel part removed, the FVU loss), on raw activations; `autocast` runs it under
    torch.autocast in bfloat16, as sparsify's trainer does on a GPU."""

    def __init__(self, data: list[torch.Tensor], autocast: bool = False) -> None:
        try:
            from schedulefree import ScheduleFreeWrapper
            from sparsify.config import SparseCoderConfig
            from sparsify.sign_sgd import SignSGD
            from sparsify.sparse_coder import SparseCoder
        except ImportError as err:
            raise SystemExit(
                f"--against sparsify needs `pip install eai-sparsify==1.3.3 schedulefree` ({err})"
            ) from err
        torch.manual_seed(0)
        self.coder = SparseCoder(D, SparseCoderConfig(num_latents=N_FEATURES, k=K))
        self.coder.b_dec.data = data[0].float().mean(0)
        lr = 5e-3 / (N_FEATURES / 2**14) ** 0.5
        self.opt = ScheduleFreeWrapper(
            SignSGD([dict(params=self.coder.parameters(), lr=lr)]), momentum=0.95
        )
        self.opt.train()
        self.autocast = autocast
        self.data = data

    def steps(self) -> float:
        seconds = 0.0
        for batch in self.data:
            x = batch.float()  # untimed, as our step's copy
            start = time.perf_counter()
            self.coder.set_decoder_norm_to_unit_norm()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
                fvu = self.coder(x).fvu
            fvu.backward()
            self.coder.remove_gradient_parallel_to_decoder_directions()
            self.opt.step()
            self.opt.zero_grad()
            seconds += time.perf_counter() - start
            del x, fvu
        return seconds / len(self.data)


PEAK_TAG = "RSS_GROWTH_KB"

# Run in a fresh interpreter. The peak is the kernel's high-water mark of this process's own
# address space (VmHWM in /proc/self/status): ru_maxrss will not do, because Linux carries it
# over fork + exec, so a child of a large benchmark process starts at its parent's peak and
# reports no growth at all. Unless cold, a tiny SAE of the same architecture trains a step
# first and the high-water mark is reset after it: what is then measured is what the SAE's
# size costs, not the process's one-off costs (the ~800 modules `torch.optim` pulls in,
# ~60 MiB; the pages of kernels run for the first time; thread pools), which the cold figure
# includes.
_PEAK_CHILD = """
import sys
sys.path.insert(0, {repo!r})
import benchmarks.train as b
data = b.batches(None, 4)
options = dict(compute_dtype={dtype!r}, weight_average={average})
if not {cold}:
    b.Trainer({arch!r}, data[:1], n_features=64, **options).steps()
    b.reset_peak_rss()
base = b.rss_kb("VmRSS")
t = b.Trainer({arch!r}, data, **options)
t.steps()
print(b.PEAK_TAG, b.rss_kb("VmHWM") - base)
"""


def reset_peak_rss() -> None:
    """Give free heap memory back to the system (glibc), then reset this process's VmHWM to
    its current RSS (Linux: write 5 to clear_refs): what the warm-up freed must not be there
    for the measured run to reuse without growing."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")


def rss_kb(field: str) -> int:
    """A memory figure of this process from /proc/self/status, in KiB (VmRSS, VmHWM, ...)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} line")


def peak_memory(
    arch: str, cold: bool = False, dtype: str = "float32", average: bool = False
) -> float:
    """Peak RSS growth of a process training 4 steps, in MiB."""
    code = _PEAK_CHILD.format(repo=str(REPO), arch=arch, cold=cold, dtype=dtype, average=average)
    return int(_child_figures(code, f"peak-memory child for {arch}", 1)[0]) / 1024


def training_budget() -> float:
    """Weights + Adam's two moments + one batch of the benchmark's SAE, in MiB."""
    n_params = 2 * D * N_FEATURES + N_FEATURES + D
    return (3 * n_params * 4 + BATCH * D * 4) / 2**20


def _child_figures(code: str, what: str, count: int) -> list[str]:
    """The `count` figures a child running `code` prints after PEAK_TAG."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    tagged = [line.split() for line in done.stdout.splitlines() if line.startswith(PEAK_TAG)]
    if done.returncode != 0 or len(tagged) != 1 or len(tagged[0]) != count + 1:
        raise RuntimeError(
            f"{what} failed (exit {done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
        )
    return tagged[0][1:]


REFIT_BATCHES = 48  # the quality benchmark's one epoch: 196k tokens

_REFIT_CHILD = """
import sys, time
sys.path.insert(0, {repo!r})
import benchmarks.train as b
b.refit(64, 2)  # warm-up: kernels, thread pools
b.reset_peak_rss()
base = b.rss_kb("VmRSS")
start = time.perf_counter()
b.refit(b.N_FEATURES, b.REFIT_BATCHES)
print(b.PEAK_TAG, b.rss_kb("VmHWM") - base, time.perf_counter() - start)
"""


def refit(n_features: int, n_batches: int) -> None:
    """A topk SAE started as the trainer starts it, its decoder refitted over `n_batches`
    Gaussian batches made one at a time (as a store's reader hands them over)."""
    return_large_blocks_when_freed()  # as monoscope.train.run does
    sae = build_sae(SAEConfig(arch="topk", d_in=D, n_features=n_features, k=K), seed=0)
    gen = torch.Generator().manual_seed(0)
    start_from_sample(sae, TrainConfig(arch="topk"), torch.randn(BATCH, D, generator=gen) * 7)
    data = (torch.randn(BATCH, D, generator=gen) * 7 for _ in range(n_batches))
    refit_decoder(sae, data, 0.01)


def refit_memory() -> tuple[float, float]:
    """(peak RSS growth in MiB, seconds) of a process refitting the topk SAE's decoder."""
    grown_kb, seconds = _child_figures(_REFIT_CHILD.format(repo=str(REPO)), "refit child", 2)
    return int(grown_kb) / 1024, float(seconds)


VARIANTS = {  # name: (architecture, compute dtype, Adam's basis (None: the trainer's default),
    # --weight-average)
    "topk": ("topk", "float32", None, False),
    "topk std": ("topk", "float32", "standard", False),
    "relu": ("relu", "float32", None, False),
    "topk bf16": ("topk", "bfloat16", None, False),
    "topk avg": ("topk", "float32", None, True),
}


def print_against_sparsify(best: dict[str, float]) -> None:
    """Our topk steps against sparsify's, timed side by side (targets: issue 23)."""
    for name in ("sparsify", "sparsify bf16"):
        print(f"{name:13s} {best[name] * 1e3:7.1f} ms/step  {BATCH / best[name]:8,.0f} tok/s")
    for ours, target in (("topk", 2.0), ("topk std", 2.0), ("topk bf16", 3.0)):
        ratio = best["sparsify"] / best[ours]
        verdict = "PASS" if ratio >= target else "below target"
        print(
            f"{ours:9s} {ratio:.2f}x sparsify's fp32 step (target >= {target:g}) {verdict}; "
            f"{best['sparsify bf16'] / best[ours]:.2f}x its bf16-autocast step"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--acts", default=None, help="activation store to read batches from")
    p.add_argument("--steps", type=int, default=6, help="timed steps per repeat")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument(
        "--against",
        choices=("sparsify",),
        default=None,
        help="also time EleutherAI sparsify's step on the same batches (fp32 and bf16 autocast)",
    )
    args = p.parse_args()
    threads = configure_threads()
    data = batches(args.acts, args.steps)
    trainers: dict[str, Trainer | SparsifyTrainer] = {
        name: Trainer(arch, data, compute_dtype=dtype, adam_basis=basis, weight_average=average)
        for name, (arch, dtype, basis, average) in VARIANTS.items()
    }
    if args.against == "sparsify":
        trainers["sparsify"] = SparsifyTrainer(data)
        trainers["sparsify bf16"] = SparsifyTrainer(data, autocast=True)
    for t in trainers.values():  # warm-up: allocator, threads
        t.data, full = t.data[:1], t.data
        t.steps()
        t.data = full
    best = dict.fromkeys(["matmul", "matmul reused", *trainers], float("inf"))
    for _ in range(args.repeats):
        best["matmul"] = min(best["matmul"], matmul_seconds(5))
        best["matmul reused"] = min(best["matmul reused"], matmul_seconds(5, reuse_output=True))
        for name, trainer in trainers.items():
            best[name] = min(best[name], trainer.steps())
    gflops = 2 * BATCH * D * N_FEATURES / best["matmul"] / 1e9
    bound_topk = BATCH / best["matmul"]
    bound_relu = BATCH / (3 * best["matmul"])
    print(
        f"torch {torch.__version__}, {threads} threads; d {D}, {N_FEATURES:,} features, "
        f"batch {BATCH}, k {K}; best of {args.repeats} x {args.steps} steps"
    )
    print(f"encoder-shape matmul: {best['matmul'] * 1e3:.1f} ms = {gflops:.0f} GFLOP/s fp32")
    reused = best["matmul reused"]
    print(
        f"  (into an output reused, without the page faults of a fresh one: "
        f"{reused * 1e3:.1f} ms = {2 * BATCH * D * N_FEATURES / reused / 1e9:.0f} GFLOP/s; "
        f"topk against that: ratio {reused / best['topk']:.2f})"
    )
    for name, bound, target in (
        ("topk", bound_topk, 0.75),
        ("topk std", bound_topk, 0.75),
        ("relu", bound_relu, 0.60),
    ):
        rate = BATCH / best[name]
        verdict = "PASS" if rate / bound >= target else "below target"
        print(
            f"{name:9s} {best[name] * 1e3:7.1f} ms/step  {rate:8,.0f} tok/s  bound "
            f"{bound:8,.0f} tok/s  ratio {rate / bound:.2f} (target >= {target})  {verdict}"
        )
    rate = BATCH / best["topk bf16"]
    print(
        f"topk bf16 {best['topk bf16'] * 1e3:7.1f} ms/step  {rate:8,.0f} tok/s  "
        f"{best['topk'] / best['topk bf16']:.2f}x the fp32 topk step, "
        f"{rate / bound_topk:.2f}x the fp32 bound"
    )
    rate = BATCH / best["topk avg"]
    print(
        f"topk avg  {best['topk avg'] * 1e3:7.1f} ms/step  {rate:8,.0f} tok/s  "
        f"ratio {rate / bound_topk:.2f}, {best['topk'] / best['topk avg']:.2f}x the topk step"
    )
    if args.against == "sparsify":
        print_against_sparsify(best)
    for name, arch, average in (
        ("topk", "topk", False),
        ("relu", "relu", False),
        ("topk avg", "topk", True),
    ):
        grown, expected = peak_memory(arch, average=average), training_budget()
        cold = peak_memory(arch, cold=True, average=average)
        print(
            f"{name:9s} peak RSS growth {grown:6.0f} MiB vs weights + Adam + batch "
            f"{expected:.0f} MiB: {grown / expected:.2f}x (target <= 1.5 at the defaults); "
            f"cold process {cold:.0f} MiB"
        )
    grown, seconds = refit_memory()
    print(
        f"topk refit peak RSS growth {grown:6.0f} MiB over {REFIT_BATCHES} batches "
        f"({REFIT_BATCHES * BATCH:,} tokens): {grown / training_budget():.2f}x weights + Adam "
        f"+ batch; {seconds:.1f} s"
    )
    print(
        "(topk: the trainer's default step, its batch rotated into Adam's eigenbasis; "
        "topk std: the same step in the standard basis, no rotation; topk avg: the default "
        "step with --weight-average, which keeps one more copy of the parameters)"
    )
    print(f"(process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB)")


if __name__ == "__main__":
    main()
