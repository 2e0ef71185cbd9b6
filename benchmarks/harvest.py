"""Harvest throughput, bf16 compute accuracy and memory flatness on the built-in model.

Measures, on SmolLM2-135M (`smollm2-135m`) at one site (default blocks.15.hook_resid_post),
with the built-in corpus packed into contexts of 128 tokens, 32 contexts (4,096 tokens) a batch,
on a fixed list of batches tokenised once up front:

1. full forward: `lm.model(input_ids=ids, use_cache=False)` under inference_mode (all 30
   layers and the unembedding), input tokens/s;
2. truncated forward: `lm.capture(ids, [site])`, which stops after the site and stores nothing;
3. harvest: the real `monoscope.harvest.run` (bf16 store in a temp dir, model passed in so
   loading is not timed) over the same contexts, tokenising the corpus itself. It stores
   127 of every 128 input tokens (BOS excluded); rates are given per input token (like for like
   with 1 and 2) and per stored token;
4. model dtype: the truncated forward of the model loaded with dtype=bfloat16 against float32
   (speed-up), and the error of bf16-computed activations against float32 on the same tokens
   (relative Frobenius error, mean per-token cosine), next to the error that merely storing
   float32 activations as bf16 introduces;
5. peak RSS of `python -m monoscope.cli harvest` subprocesses at N and 4N tokens (shards of
   16,384 tokens): memory should stay flat as the token count grows.

Variants of 1-4 are interleaved (the order rotates each repeat) after a warm-up, and the best
of the repeats is kept: the machine is shared and noisy, so every ratio compares numbers taken
in the same run.

Targets: harvest / full forward >= 1.7x; harvest / truncated forward >= 0.9;
peak RSS(4N) / peak RSS(N) about 1.0.

Run from the repository root:
    python benchmarks/harvest.py [--tokens N] [--site S] [--quick]
(about 4-6 minutes on 2 CPU cores; --quick about 2 minutes).
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run from a checkout without installing the package

import cli_rss  # noqa: E402  (benchmarks/cli_rss.py, beside this script)
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from monoscope.data import CorpusSpec, iter_contexts  # noqa: E402
from monoscope.harvest import ActivationStore, HarvestConfig, run  # noqa: E402
from monoscope.models import LanguageModel, load_model  # noqa: E402
from monoscope.runtime import configure_threads  # noqa: E402

MODEL = "smollm2-135m"
CONTEXT = 128
BATCH_CONTEXTS = 32
BATCH_TOKENS = CONTEXT * BATCH_CONTEXTS  # 4096
RSS_SHARD_TOKENS = 16_384

# Runs the CLI in-process and reports its own peak RSS (kB on Linux) when /usr/bin/time is absent.


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--tokens",
        type=int,
        default=None,
        help="input tokens per timed pass, rounded up to whole batches of 4096 "
        "(default 8192; --quick 4096)",
    )
    p.add_argument("--site", default="blocks.15.hook_resid_post", help="site to capture")
    p.add_argument(
        "--rss-tokens",
        type=int,
        default=None,
        help="N for the peak-RSS runs at N and 4N tokens (default 16384; --quick 4096)",
    )
    p.add_argument("--repeats", type=int, default=None, help="repeats per variant (default 3)")
    p.add_argument("--quick", action="store_true", help="smaller sizes, about 2 minutes")
    args = p.parse_args()
    if args.tokens is None:
        args.tokens = 4096 if args.quick else 8192
    if args.rss_tokens is None:
        args.rss_tokens = 4096 if args.quick else 16_384
    if args.repeats is None:
        args.repeats = 2 if args.quick else 3
    return args


def fixed_batches(lm: LanguageModel, n_batches: int) -> list[torch.Tensor]:
    """The first n_batches batches of the built-in corpus, exactly as the harvest packs them."""
    contexts = iter_contexts(CorpusSpec("builtin"), lm.tokenizer, CONTEXT)
    chunk = list(itertools.islice(contexts, n_batches * BATCH_CONTEXTS))
    return [
        torch.tensor([c.tokens for c in chunk[i : i + BATCH_CONTEXTS]])
        for i in range(0, len(chunk), BATCH_CONTEXTS)
    ]


def full_forward(lm: LanguageModel, batches: list[torch.Tensor]) -> None:
    with torch.inference_mode():
        for ids in batches:
            lm.model(input_ids=ids, use_cache=False)  # logits dropped at once


def truncated(lm: LanguageModel, batches: list[torch.Tensor], site: str) -> list[torch.Tensor]:
    return [lm.capture(ids, [site])[site] for ids in batches]


def harvest_once(lm: LanguageModel, site: str, stored_tokens: int, out: Path) -> ActivationStore:
    cfg = HarvestConfig(
        model=MODEL,
        sites=[site],
        corpus="builtin",
        tokens=stored_tokens,
        out=str(out),
        dtype="bfloat16",
        context=CONTEXT,
        batch_tokens=BATCH_TOKENS,
        progress=False,
    )
    return run(cfg, lm)


def timed(fn: Callable[..., object], *args: object) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


class ErrorStats:
    """Relative Frobenius error and per-token cosine of `approx` against `ref`, accumulated."""

    def __init__(self) -> None:
        self.diff_sq = self.ref_sq = 0.0
        self.cosines: list[torch.Tensor] = []

    def add(self, approx: torch.Tensor, ref: torch.Tensor) -> None:
        approx, ref = approx.double(), ref.double()
        self.diff_sq += float((approx - ref).pow(2).sum())
        self.ref_sq += float(ref.pow(2).sum())
        self.cosines.append(F.cosine_similarity(approx, ref, dim=-1).reshape(-1))

    def summary(self) -> str:
        cos = torch.cat(self.cosines)
        rel = (self.diff_sq / self.ref_sq) ** 0.5
        return f"rel err {rel:.2e}   mean cos {cos.mean():.6f}   min cos {cos.min():.6f}"


def cli_peak_rss(site: str, tokens: int, out: Path) -> tuple[int, float]:
    """Peak RSS (kB) and wall seconds (start-up and model load included) of one
    `monoscope harvest` subprocess."""
    cli = [
        "harvest",
        "--model",
        MODEL,
        "--site",
        site,
        "--corpus",
        "builtin",
        "--tokens",
        str(tokens),
        "--out",
        str(out),
        "--dtype",
        "bf16",
        "--no-progress",
        "--shard-tokens",
        str(RSS_SHARD_TOKENS),
    ]
    peak_kb, wall = cli_rss.peak_rss(cli)
    stored = ActivationStore(out).n_tokens
    if stored != tokens:
        raise RuntimeError(f"CLI harvest stored {stored} tokens, asked {tokens}")
    return peak_kb, wall


FULL = "full forward (fp32)"
TRUNC = "truncated forward (fp32)"
HARVEST = "harvest run() (fp32 model, bf16 store)"
TRUNC16 = "truncated forward (bf16 model)"
VARIANTS = [FULL, TRUNC, HARVEST, TRUNC16]


def speed_and_accuracy(args: argparse.Namespace, tmp: Path) -> None:
    """Sections 1-4: interleaved timings, ratios, and bf16 activation error."""
    n_batches = max(1, -(-args.tokens // BATCH_TOKENS))
    input_tokens = n_batches * BATCH_TOKENS
    stored_tokens = n_batches * BATCH_CONTEXTS * (CONTEXT - 1)
    site = args.site
    print(
        f"site {site}; {n_batches} batch(es) of {BATCH_CONTEXTS} x {CONTEXT} tokens "
        f"= {input_tokens:,} input tokens per pass; best of {args.repeats} repeats"
    )
    lm32 = load_model(MODEL)
    lm16 = load_model(MODEL, dtype="bfloat16")
    tok_s, batches = timed(fixed_batches, lm32, n_batches)
    print(f"pre-tokenised {len(batches)} batch(es) in {tok_s:.2f} s (not timed below)")

    # Warm-up: every variant once on a small batch (the harvest on 4 contexts).
    small = [batches[0][:4]]
    full_forward(lm32, small)
    truncated(lm32, small, site)
    truncated(lm16, small, site)
    warm = HarvestConfig(
        model=MODEL,
        sites=[site],
        tokens=4 * (CONTEXT - 1),
        out=str(tmp / "warmup"),
        dtype="bfloat16",
        context=CONTEXT,
        batch_tokens=4 * CONTEXT,
        progress=False,
    )
    run(warm, lm32)

    jobs: dict[str, Callable[[int], object]] = {
        FULL: lambda rep: full_forward(lm32, batches),
        TRUNC: lambda rep: truncated(lm32, batches, site),
        HARVEST: lambda rep: harvest_once(lm32, site, stored_tokens, tmp / f"store-{rep}"),
        TRUNC16: lambda rep: truncated(lm16, batches, site),
    }
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    last: dict[str, object] = {}
    for rep in range(args.repeats):
        k = rep % len(VARIANTS)  # rotate the order so no variant always runs first
        for name in VARIANTS[k:] + VARIANTS[:k]:
            t, last[name] = timed(jobs[name], rep)
            times[name].append(t)

    best = {name: min(ts) for name, ts in times.items()}
    rate = {name: input_tokens / t for name, t in best.items()}
    print()
    print(f"{'variant':<40} {'best s':>7} {'all s':>22} {'input tok/s':>12} {'stored tok/s':>13}")
    for name in VARIANTS:
        all_s = " ".join(f"{t:.2f}" for t in times[name])
        stored = f"{stored_tokens / best[name]:>13,.0f}" if name == HARVEST else ""
        print(f"{name:<40} {best[name]:>7.2f} {all_s:>22} {rate[name]:>12,.0f} {stored}")

    full, trunc, harv, trunc16 = (rate[v] for v in VARIANTS)
    print()
    print(
        f"harvest / full forward      {harv / full:5.2f}x  (target >= 1.7)  "
        f"{'PASS' if harv / full >= 1.7 else 'MISS'}   "
        f"[stored-token rate / full: {harv * (CONTEXT - 1) / CONTEXT / full:.2f}x]"
    )
    print(
        f"harvest / truncated         {harv / trunc:5.2f}   (target >= 0.9)  "
        f"{'PASS' if harv / trunc >= 0.9 else 'MISS'}"
    )
    print(f"truncated / full forward    {trunc / full:5.2f}x")
    print(f"bf16 / fp32 truncated       {trunc16 / trunc:5.2f}x  (model dtype speed-up)")

    # The store holds exactly what capture returns on the same batches (cast to bf16).
    store = last[HARVEST]
    acts32: list[torch.Tensor] = last[TRUNC]
    acts16: list[torch.Tensor] = last[TRUNC16]
    assert isinstance(store, ActivationStore) and store.n_tokens == stored_tokens
    first = BATCH_CONTEXTS * (CONTEXT - 1)
    shard = store.load_shard(0)
    same_ids = torch.equal(shard["token_ids"][:first].long(), batches[0][:, 1:].reshape(-1))
    want = acts32[0][:, 1:].reshape(first, -1).to(torch.bfloat16).float()
    gap = (shard[f"acts.{site}"][:first].float() - want).abs().max()
    print(f"check: store batch 0 token ids match: {same_ids}; max |store - capture| {gap:.3g}")

    print()
    print(f"activation error over {input_tokens:,} tokens ({n_batches} batch(es)):")
    bf16_stored, bf16_all, roundtrip = ErrorStats(), ErrorStats(), ErrorStats()
    for a16, a32 in zip(acts16, acts32, strict=True):
        bf16_stored.add(a16[:, 1:].float(), a32[:, 1:])
        bf16_all.add(a16.float(), a32)
        roundtrip.add(a32[:, 1:].to(torch.bfloat16).float(), a32[:, 1:])
    print(f"  bf16 model vs fp32, stored positions (no BOS): {bf16_stored.summary()}")
    print(f"  bf16 model vs fp32, all positions (with BOS):  {bf16_all.summary()}")
    print(f"  fp32 stored as bf16 (round-trip), no BOS:      {roundtrip.summary()}")


def peak_rss(args: argparse.Namespace, tmp: Path) -> None:
    """Section 5: peak RSS of CLI harvests at N and 4N tokens."""
    sizes = [args.rss_tokens, 4 * args.rss_tokens]
    how = cli_rss.how_measured()
    print(
        f"peak RSS of `python -m monoscope.cli harvest` (fp32 model, bf16 store, shards of "
        f"{RSS_SHARD_TOKENS:,} tokens; {how}):"
    )
    print(
        f"{'tokens':>10} {'shards':>7} {'wall s':>8} {'loop s':>8} {'loop tok/s':>11} "
        f"{'peak RSS MiB':>13}"
    )
    peaks = []
    for n in sizes:
        out = tmp / f"cli-{n}"
        peak_kb, wall = cli_peak_rss(args.site, n, out)
        cli_store = ActivationStore(out)
        shards, loop = len(cli_store.shards), cli_store.manifest["seconds"]
        shutil.rmtree(out)
        peaks.append(peak_kb)
        print(
            f"{n:>10,} {shards:>7} {wall:>8.1f} {loop:>8.1f} {n / loop:>11,.0f} "
            f"{peak_kb / 1024:>13,.0f}"
        )
    ratio = peaks[1] / peaks[0]
    print(
        f"peak RSS {sizes[1]:,} / {sizes[0]:,} tokens: {ratio:.3f}  (target about 1.0)  "
        f"{'PASS' if ratio <= 1.1 else 'MISS'}"
    )


def main() -> None:
    args = parse_args()
    start = time.perf_counter()
    threads = configure_threads()  # the harvest sets the same thread count itself
    print(f"torch {torch.__version__}, {threads} threads, {os.cpu_count()} CPUs; model {MODEL}")
    tmp = Path(tempfile.mkdtemp(prefix="monoscope-bench-"))
    try:
        speed_and_accuracy(args, tmp)
        print()
        peak_rss(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
