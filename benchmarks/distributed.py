"""Training across processes on this machine's CPUs (issue 24, parts 2 and 3), gloo.

(a) Data parallel: `monoscope train` in one process (MONOSCOPE_THREADS=2) against
    `torchrun --nproc-per-node 2 -m monoscope train` (MONOSCOPE_THREADS=1 each), and the same
    with `--shard-features` (each process its half of the dictionary, every whole batch), same
    global batch, on a synthetic array (`--tokens` rows x `--d`, sparse codes over random directions
    plus noise, written once into `--work`): topk, `--features` 9216, k 32, batch 4096. The
    tokens/s of each run are read from its train_log.jsonl, over the steps after the first
    `_WARM_STEPS` (the log's rate is cumulative from the loop's start: elapsed = tokens /
    rate); runs interleaved, best of `--repeats`. Then the parity error: the largest
    difference between the two runs' saved weights (tests/unit/test_train_parallel.py holds
    it to 1e-5 at a small size), against the same difference between two one-process runs
    that differ only in their thread count (float sums in another order: the floor of what
    rounding alone does to a TopK run, whose near-tied selections flip and then grow).
(b) Feature-sharded memory: peak RSS growth of one process training the whole TopK SAE of
    `--memory-features` x `--d` as the trainer does (StepMemory, deferred W_enc gradient,
    fused Adam) against each of 2 processes training a `ShardedTopKSAE` slice of it
    (monoscope.sae.sharded, with monoscope.train.step.apply_gradients), over
    `--memory-steps` steps of Gaussian batches of 4096 with 5% of the latents dead (AuxK on).
    Each process first trains a tiny SAE and resets its high-water mark (VmHWM), so the figure
    is what the SAE's size costs, not the process's one-off costs; also the bytes of the
    parameters + Adam's moments + one weight gradient (the step's peak state), and the time a
    step. Target: per-rank / unsharded <= 0.55.
(c) The same through `monoscope train` itself: the peak RSS of one process training the
    `--memory-features` SAE on the synthetic array (10 steps, a checkpoint every 5) against
    each process of `train --shard-features` in 2 processes (torchrun), each less the peak of
    the same run with a 1,024-feature SAE (the fixed costs: torch, the store's shuffle pool).
    Process 0 also builds the starting SAE, gathers the trained one and writes checkpoints.

Run from the repository root (about 3-6 minutes on 2 shared cores):
    python benchmarks/distributed.py [--work runs/bench-distributed] [--tokens 200000]
        [--repeats 2] [--memory-features 65536] [--skip-throughput] [--skip-memory]
        [--skip-train-memory]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.train import reset_peak_rss, rss_kb  # noqa: E402

_WARM_STEPS = 4  # logged steps left out of the rate: the loop's first steps fault pages in
_DEAD_SHARE = 0.05
_TAG = "DISTRIBUTED_MEMORY"
_PEAK_TAG = "TRAIN_PEAK"
_FIXED_FEATURES = 1024


def synthetic_array(path: Path, rows: int, d: int) -> Path:
    """[rows, d] float32 activations from sparse codes over 4d random directions, written once
    (reused while its shape matches)."""
    if path.exists() and np.load(path, mmap_mode="r").shape == (rows, d):
        return path
    rng = np.random.default_rng(0)
    directions = rng.standard_normal((4 * d, d)).astype(np.float32) / np.sqrt(d)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, d))
    for start in range(0, rows, 8192):
        n = min(8192, rows - start)
        codes = (rng.random((n, 4 * d)) < 0.02) * rng.exponential(1.0, (n, 4 * d))
        out[start : start + n] = codes.astype(np.float32) @ directions
        out[start : start + n] += 0.05 * rng.standard_normal((n, d)).astype(np.float32)
    out.flush()
    return path


def train_run(
    acts: Path,
    out: Path,
    args: argparse.Namespace,
    processes: int,
    threads: int | None = None,
    extra: tuple[str, ...] = (),
) -> float:
    """Run `monoscope train` (with `extra` options) in `processes` processes of `threads`
    threads (default: the --threads split over them); its steady tokens/s (from its log)."""
    options = ["--acts", str(acts), "--out", str(out), "--features", str(args.features), *extra]
    options += ["--k", str(args.k), "--batch-size", str(args.batch), "--log-every", "1"]
    options += ["--checkpoint-every", "100000", "--no-progress", "--overwrite"]
    each = threads or max(1, args.threads // processes)
    launched(["-m", "monoscope", "train", *options], processes, each)
    return steady_rate(out / "train_log.jsonl")


def launched(program: list[str], processes: int, threads: int) -> str:
    """Run `python <program>` in one process, or in `processes` under torchrun, each of
    `threads` threads; its standard output (a failure raises, with its standard error)."""
    torchrun = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    command = [sys.executable, *(torchrun if processes > 1 else []), *program]
    env = os.environ | {"MONOSCOPE_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def steady_rate(log: Path) -> float:
    """Tokens/s between the `_WARM_STEPS`-th logged step and the last, from the cumulative
    rates the trainer logs (elapsed = tokens / rate)."""
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    if len(lines) <= _WARM_STEPS + 1:
        raise RuntimeError(f"{log}: too few steps for a steady rate; raise --tokens")
    first, last = lines[_WARM_STEPS], lines[-1]
    elapsed = [line["tokens"] / line["tokens_per_s"] for line in (first, last)]
    return (last["tokens"] - first["tokens"]) / (elapsed[1] - elapsed[0])


def parity(one: Path, two: Path) -> float:
    """The largest difference between the weights of the SAEs saved in two folders."""
    a, b = load_file(str(one / "weights.safetensors")), load_file(str(two / "weights.safetensors"))
    return max(float((a[name] - b[name]).abs().max()) for name in a)


def throughput(args: argparse.Namespace, work: Path) -> None:
    acts = synthetic_array(work / f"acts-{args.tokens}x{args.d}.npy", args.tokens, args.d)
    runs = {"1": (1, ()), "2": (2, ()), "2-sharded": (2, ("--shard-features",))}
    best = dict.fromkeys(runs, 0.0)
    for _ in range(args.repeats):
        for name, (processes, extra) in runs.items():
            rate = train_run(acts, work / f"sae-{name}", args, processes, extra=extra)
            best[name] = max(best[name], rate)
    error = parity(work / "sae-1", work / "sae-2")
    sharded_error = parity(work / "sae-1", work / "sae-2-sharded")
    # The rounding floor: one process again with another thread count (other sums' orders).
    other = 1 if args.threads > 1 else 2
    train_run(acts, work / "sae-1-other-threads", args, 1, threads=other)
    floor = parity(work / "sae-1", work / "sae-1-other-threads")
    fvu = {n: json.loads(last_line(work / f"sae-{n}" / "train_log.jsonl"))["fvu"] for n in runs}
    each = max(1, args.threads // 2)
    print(f"\n(a) data parallel: {args.tokens} x {args.d} tokens, {args.features} features, k")
    print(
        f"    {args.k}, batch {args.batch}, {args.threads} threads in all; best of {args.repeats}"
    )
    threads = f"{each} thread{'s' * (each > 1)}"
    print(f"    1 process   x {args.threads} threads: {best['1']:10,.0f} tokens/s")
    print(f"    2 processes x {threads}: {best['2']:10,.0f} tokens/s")
    print(f"    2 / 1: {best['2'] / best['1']:.2f}x; largest weight difference {error:.2e}")
    print(f"    2 feature-sharded processes x {threads}: {best['2-sharded']:10,.0f} tokens/s")
    print(
        f"    sharded / 1: {best['2-sharded'] / best['1']:.2f}x; largest weight difference "
        f"{sharded_error:.2e}"
    )
    print(f"    (1 process at {args.threads} against {other} threads: {floor:.2e}, the rounding")
    print(
        f"    floor); last step's FVU {fvu['1']:.6f} (1 process), {fvu['2']:.6f} (2), "
        f"{fvu['2-sharded']:.6f} (2 sharded)"
    )


def last_line(path: Path) -> str:
    return path.read_text().splitlines()[-1]


# -- (b) memory -------------------------------------------------------------------------------
def memory_worker(args: argparse.Namespace) -> None:
    """One process of (b): the whole SAE (size 1) or one slice of it; prints its figures."""
    import torch.distributed as dist

    from monoscope.distributed import World
    from monoscope.train.memory import return_large_blocks_when_freed

    return_large_blocks_when_freed()  # as `monoscope train` does on the CPU
    world = World(args.rank, args.size, args.rank)
    torch.set_num_threads(max(1, args.threads // args.size))
    if world.distributed:
        rendezvous = f"file://{args.worker_dir / 'rendezvous'}"
        dist.init_process_group(
            "gloo", init_method=rendezvous, rank=world.rank, world_size=world.size
        )
    batches = [
        torch.randn(args.batch, args.d, generator=torch.Generator().manual_seed(s))
        for s in range(args.memory_steps)
    ]
    train_steps(args, world, 48 * max(1, args.size), batches[:1])  # warm-up: kernels, imports
    reset_peak_rss()
    base = rss_kb("VmRSS")
    seconds, state = train_steps(args, world, args.memory_features, batches)
    figures = {"rank": world.rank, "growth_kb": rss_kb("VmHWM") - base, "peak_kb": rss_kb("VmHWM")}
    print(_TAG, json.dumps({**figures, "state_bytes": state, "step_s": seconds}))
    if world.distributed:
        dist.destroy_process_group()


def train_steps(
    args: argparse.Namespace, world, n_features: int, batches: list[torch.Tensor]
) -> tuple[float, int]:
    """Train a TopK SAE of `n_features` (this process's slice where `world` has several)
    over `batches` as the trainer would; (median seconds a step, the bytes of parameters +
    Adam's moments + one weight gradient)."""
    from monoscope.sae import SAEConfig, build_sae
    from monoscope.sae.sharded import ShardedTopKSAE
    from monoscope.sae.step_memory import StepMemory
    from monoscope.train.step import apply_gradients

    cfg = SAEConfig("topk", args.d, n_features, k=args.k)
    generator = torch.Generator().manual_seed(world.rank)
    if world.distributed:
        sae = ShardedTopKSAE(cfg, world)
        sae.init_slice(seed=0)
    else:
        sae = build_sae(cfg, seed=0)
    sae.step_memory = StepMemory()
    width = n_features // world.size
    dead = torch.rand(width, generator=generator) < _DEAD_SHARE
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3, fused=True)
    times = []
    for x in batches:
        start = time.perf_counter()
        result = sae.training_step(x, 1 / 32, dead)
        result.loss.backward()
        apply_gradients(sae, opt, result, 1.0)
        sae.after_optimizer_step()
        times.append(time.perf_counter() - start)
        del result
    params = sum(p.numel() * p.element_size() for p in sae.parameters())
    adam = sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values())
    gradient = sae.W_dec.numel() * sae.W_dec.element_size()
    return statistics.median(times), params + adam + gradient


def memory(args: argparse.Namespace, work: Path) -> None:
    """(b): the whole SAE in one process, then 2 processes holding a slice each."""
    results = {1: _memory_run(args, work, 1), 2: _memory_run(args, work, 2)}
    whole, ranks = results[1][0], results[2]
    mib = 2**20 / 1024
    print(f"\n(b) feature-sharded memory: topk {args.memory_features} x {args.d}, k {args.k},")
    print(f"    batch {args.batch}, {args.memory_steps} steps, {_DEAD_SHARE:.0%} dead (AuxK)")
    print("    process            RSS growth   peak RSS   params+Adam+grad   step")
    rows = [("unsharded", whole)] + [(f"sharded rank {r['rank']}", r) for r in ranks]
    for name, r in rows:
        print(
            f"    {name:<18} {r['growth_kb'] / mib:7.0f} MiB {r['peak_kb'] / mib:7.0f} MiB "
            f"{r['state_bytes'] / 2**20:10.0f} MiB   {r['step_s']:6.2f} s"
        )
    for what in ("growth_kb", "peak_kb", "state_bytes"):
        worst = max(r[what] for r in ranks)
        print(f"    per-rank / unsharded, {what}: {worst / whole[what]:.3f} (target <= 0.55)")


def _memory_run(args: argparse.Namespace, work: Path, size: int) -> list[dict]:
    """Start `size` memory workers; their figures, in rank order."""
    folder = work / f"memory-{size}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rendezvous").unlink(missing_ok=True)
    command = [sys.executable, __file__, "--memory-worker", str(folder), "--size", str(size)]
    for name in ("d", "k", "batch", "memory_features", "memory_steps", "threads"):
        command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    env = os.environ | {"OMP_NUM_THREADS": str(max(1, args.threads // size))}
    running = [
        subprocess.Popen(
            [*command, "--rank", str(rank)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(size)
    ]
    figures = []
    for process in running:
        out, err = process.communicate()
        tagged = [line for line in out.splitlines() if line.startswith(_TAG)]
        if process.returncode != 0 or len(tagged) != 1:
            raise RuntimeError(f"memory worker failed (exit {process.returncode}):\n{err[-3000:]}")
        figures.append(json.loads(tagged[0][len(_TAG) :]))
    return figures


# -- (c) memory of `monoscope train` ----------------------------------------------------------
def peak_worker(argv: list[str]) -> None:
    """One process of (c): `monoscope <argv>`, then its peak RSS, also when the CLI leaves
    through os._exit (as a process torchrun started does)."""
    from monoscope.cli import main as cli

    leave = os._exit

    def report_and_leave(code: int) -> None:
        _report_peak()
        leave(code)

    os._exit = report_and_leave  # type: ignore[assignment]
    code = cli(argv)
    _report_peak()
    sys.exit(code)


def _report_peak() -> None:
    figures = {"rank": int(os.environ.get("RANK", "0")), "peak_kb": rss_kb("VmHWM")}
    print(_PEAK_TAG, json.dumps(figures), flush=True)


def train_peaks(acts: Path, out: Path, args: argparse.Namespace, features: int, sharded: bool):
    """Peak RSS (kB) of each process of a 10-step `monoscope train` of `features` features: one
    process, or 2 feature-sharded ones; in rank order."""
    options = ["train", "--acts", str(acts), "--out", str(out), "--features", str(features)]
    options += ["--k", str(args.k), "--batch-size", str(args.batch), "--overwrite"]
    options += ["--tokens", str(10 * args.batch), "--checkpoint-every", "5", "--no-progress"]
    processes = 2 if sharded else 1
    program = [__file__, "--train-peak", *options, *(["--shard-features"] * sharded)]
    out_text = launched(program, processes, max(1, args.threads // processes))
    tagged = [line for line in out_text.splitlines() if line.startswith(_PEAK_TAG)]
    if len(tagged) != processes:
        raise RuntimeError(f"expected {processes} peak figures, got:\n{out_text[-3000:]}")
    figures = sorted(
        (json.loads(line[len(_PEAK_TAG) :]) for line in tagged), key=lambda f: f["rank"]
    )
    return [f["peak_kb"] for f in figures]


def train_memory(args: argparse.Namespace, work: Path) -> None:
    """(c): peak RSS growth of `monoscope train`, one process against 2 feature-sharded."""
    acts = synthetic_array(work / f"acts-{args.tokens}x{args.d}.npy", args.tokens, args.d)
    growth = {}
    for sharded in (False, True):
        fixed = train_peaks(acts, work / "train-memory", args, _FIXED_FEATURES, sharded)
        peaks = train_peaks(acts, work / "train-memory", args, args.memory_features, sharded)
        growth[sharded] = [peak - base for peak, base in zip(peaks, fixed, strict=True)]
    mib = 1024
    one = growth[False][0]
    print(f"\n(c) monoscope train: topk {args.memory_features} x {args.d}, k {args.k}, batch")
    print(f"    {args.batch}, 10 steps; peak RSS less that of {_FIXED_FEATURES} features")
    print(f"    1 process:                  {one / mib:7.0f} MiB")
    for rank, value in enumerate(growth[True]):
        print(f"    --shard-features, rank {rank}:  {value / mib:7.0f} MiB ({value / one:.3f}x)")
    print(f"    per-rank / unsharded: {max(growth[True]) / one:.3f} (target <= 0.55)")


def main() -> None:
    if sys.argv[1:2] == ["--train-peak"]:
        peak_worker(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "bench-distributed")
    parser.add_argument("--tokens", type=int, default=200_000)
    parser.add_argument("--d", type=int, default=576)
    parser.add_argument("--features", type=int, default=9216)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument(
        "--threads", type=int, default=2, help="threads in all, split over processes"
    )
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--memory-features", type=int, default=65536)
    parser.add_argument("--memory-steps", type=int, default=4)
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-train-memory", action="store_true")
    parser.add_argument("--memory-worker", type=Path, dest="worker_dir", help=argparse.SUPPRESS)
    parser.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker_dir is not None:
        memory_worker(args)
        return
    args.work.mkdir(parents=True, exist_ok=True)
    if not args.skip_throughput:
        throughput(args, args.work)
    if not args.skip_memory:
        memory(args, args.work)
    if not args.skip_train_memory:
        train_memory(args, args.work)


if __name__ == "__main__":
    main()
