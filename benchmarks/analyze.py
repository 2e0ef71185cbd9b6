"""Analyze throughput against SAE encoding, the whole run's stages, and memory flatness.

Measures, for an SAE on an activation store (default: the demo's runs/demo/sae on
runs/demo/acts; a TopK SAE of 16 x 576 = 9,216 features on SmolLM2-135M's layer 15):

1. the pass: for each batch of the analyze pass (store order, --batch-size rows), the SAE encode
   (analyze's `encode`, all threads) and the bookkeeping (`Accumulator.update` as analyze runs
   it: single-threaded, merges included, the final flush added), interleaved in one loop so
   both see the same machine. Prints encode-only tokens/s, pass tokens/s (encode +
   bookkeeping), and bookkeeping / encode (target < 0.30). With --compare-threads the
   bookkeeping also runs with all threads, on a second accumulator, for comparison;
2. the whole run: `monoscope.analyze.run` on the store (logit effects with the store's model,
   the UMAP map), wall time and the time of each stage (meta.seconds of the store);
3. peak RSS of `python -m monoscope.cli analyze` subprocesses (--no-logits --no-map: the model
   and UMAP are fixed costs) at N and 4N tokens (--max-tokens), with the code cache on (its
   memory grows with tokens up to --cache-entries, 12 bytes an entry) and off: memory should
   stay flat as tokens grow, up to the cache's bound.

Run from the repository root:
    python benchmarks/analyze.py [--sae runs/demo/sae] [--acts runs/demo/acts] [--quick]
(about 6-10 minutes on 2 busy CPU cores for a 200k-token store; --quick about 3).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run from a checkout without installing the package

import cli_rss  # noqa: E402  (benchmarks/cli_rss.py, beside this script)
import torch  # noqa: E402

from monoscope.analyze import AnalyzeConfig, accumulate, run  # noqa: E402
from monoscope.analyze.accumulate import Accumulator  # noqa: E402
from monoscope.analyze.runner import encode, pass_batches  # noqa: E402
from monoscope.harvest import ActivationStore  # noqa: E402
from monoscope.runtime import configure_threads  # noqa: E402
from monoscope.sae import load_sae  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sae", default="runs/demo/sae", help="SAE folder")
    parser.add_argument("--acts", default="runs/demo/acts", help="activation store")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--tokens", type=int, default=0, help="pass tokens (0: whole store)")
    parser.add_argument("--rss-tokens", type=int, default=0, help="N of the RSS runs (0: store/4)")
    parser.add_argument("--compare-threads", action="store_true")
    parser.add_argument("--skip-run", action="store_true", help="skip section 2")
    parser.add_argument("--quick", action="store_true", help="fewer tokens everywhere")
    args = parser.parse_args()
    if args.quick:
        args.tokens = args.tokens or 16 * args.batch_size
        args.skip_run = True
    return args


def accumulator(n_features: int, neighbour_index: torch.Tensor) -> Accumulator:
    return Accumulator.for_config(AnalyzeConfig(), n_features, neighbour_index)


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def pass_throughput(args: argparse.Namespace, threads: int) -> None:
    """Section 1."""
    from monoscope.analyze.neighbours import cosine_neighbours

    sae, store = load_sae(args.sae), ActivationStore(args.acts)
    n_features = sae.cfg.n_features
    neighbours = cosine_neighbours(sae.W_dec, AnalyzeConfig().neighbours)[0]
    single = accumulator(n_features, neighbours)
    multi = accumulator(n_features, neighbours) if args.compare_threads else None
    cfg = AnalyzeConfig(batch_size=args.batch_size, max_tokens=args.tokens)
    batches = list(pass_batches(store, sae.cfg.site or store.sites[0], cfg, 0))
    encode(sae, batches[0][0])  # warm-up
    t_encode = t_single = t_multi = 0.0
    tokens = 0
    for x, locs in batches:
        seconds, f = timed(encode, sae, x)
        t_encode += seconds
        t_single += timed(single.update, f, locs)[0]
        if multi is not None:
            accumulate.BOOKKEEPING_THREADS = threads
            t_multi += timed(multi.update, f, locs)[0]
            accumulate.BOOKKEEPING_THREADS = 1
        tokens += x.shape[0]
    t_single += timed(single.flush)[0]
    print(
        f"pass over {tokens:,} tokens ({len(batches)} batches of <= {args.batch_size}) of "
        f"{args.acts}, SAE {sae.cfg.arch} with {n_features:,} features (d_in {sae.cfg.d_in}):"
    )
    print(f"  encode only:                    {t_encode:7.1f} s  {tokens / t_encode:9,.0f} tok/s")
    print(
        f"  encode + bookkeeping (1 thread): {t_encode + t_single:6.1f} s  "
        f"{tokens / (t_encode + t_single):9,.0f} tok/s"
    )
    ratio = t_single / t_encode
    verdict = "PASS" if ratio < 0.30 else "MISS"
    print(f"  bookkeeping / encode: {ratio:.3f}  (target < 0.30)  {verdict}")
    if multi is not None:
        t_multi += timed(multi.flush)[0]
        print(
            f"  bookkeeping with {threads} threads / encode: {t_multi / t_encode:.3f} "
            f"(1 thread: {ratio:.3f})"
        )


def whole_run(args: argparse.Namespace, tmp: Path) -> None:
    """Section 2."""
    out = tmp / "features.db"
    cfg = AnalyzeConfig(sae=args.sae, acts=args.acts, out=str(out), progress=False)
    wall, _ = timed(run, cfg)
    conn = sqlite3.connect(out)
    meta = {k: json.loads(v) for k, v in conn.execute("SELECT key, value FROM meta")}
    counts = {
        t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
        for t in ("features", "examples", "neighbours", "vocab")
    }
    conn.close()
    stages = meta["seconds"]
    rest = wall - sum(stages.values())
    print(f"monoscope.analyze.run on {meta['tokens_seen']:,} tokens (logits, map): {wall:.1f} s")
    print(
        "  " + ", ".join(f"{k} {v:.1f} s" for k, v in stages.items()) + f", rest {rest:.1f} s "
        "(loading the SAE and store, hashing them, start-up of the pass)"
    )
    print(f"  rows: {counts}; file {out.stat().st_size / 2**20:.0f} MiB")


def cli_peak_rss(
    args: argparse.Namespace, tokens: int, out: Path, cache: bool
) -> tuple[int, float]:
    cli = [
        "analyze",
        "--sae",
        args.sae,
        "--acts",
        args.acts,
        "--out",
        str(out),
        "--max-tokens",
        str(tokens),
        "--no-logits",
        "--no-map",
        "--no-progress",
    ]
    if not cache:
        cli += ["--cache-entries", "0"]
    peak_kb, wall = cli_rss.peak_rss(cli)
    return peak_kb, wall


def peak_rss(args: argparse.Namespace, tmp: Path) -> None:
    """Section 3."""
    n = args.rss_tokens or ActivationStore(args.acts).n_tokens // (16 if args.quick else 4)
    print(f"peak RSS of `monoscope analyze --no-logits --no-map` at {n:,} and {4 * n:,} tokens:")
    for cache in (True, False):
        peaks = []
        for tokens in (n, 4 * n):
            out = tmp / f"rss-{tokens}-{cache}.db"
            peak_kb, wall = cli_peak_rss(args, tokens, out, cache)
            out.unlink()
            peaks.append(peak_kb)
            print(
                f"  code cache {'on ' if cache else 'off'} {tokens:>9,} tokens: "
                f"{peak_kb / 1024:7,.0f} MiB  ({wall:.0f} s)"
            )
        ratio = peaks[1] / peaks[0]
        print(
            f"  code cache {'on ' if cache else 'off'} ratio 4N / N: {ratio:.3f}"
            + ("  (target about 1.0)" if not cache else "  (the cache grows to its bound)")
        )


def main() -> None:
    args = parse_args()
    start = time.perf_counter()
    threads = configure_threads()
    print(f"torch {torch.__version__}, {threads} threads, {os.cpu_count()} CPUs")
    tmp = Path(tempfile.mkdtemp(prefix="monoscope-bench-"))
    try:
        pass_throughput(args, threads)
        print()
        if not args.skip_run:
            whole_run(args, tmp)
            print()
        peak_rss(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
