"""Word search over a million explanations (`Catalog.search`): the catalogue's build time and
memory, and how long a first search and its second page take.

Two synthetic sets of `--features` explanations (default 1,000,000) of 5-12 words each:
- `realistic`: words drawn Zipf-like (p ~ 1/rank) from `--vocab` distinct ones (default
  20,000): words common in explanations first, then made-up words of 1-4 syllables; one word in
  ten followed by punctuation, a few quoted or in brackets, the first letter a capital;
- `28-words`: words drawn uniformly from 28 (the case measured before the word index).

Each set is measured in a subprocess of its own, so that its memory figures are its own: the
Catalog's construction from its columns (seconds; peak RSS growth, VmHWM reset just before, and
the RSS kept after it); then for each query a first search (the kept words' matches cleared)
and its second page (offset 50), sorted by density descending, median of `--repeats`; then
p50 / p95 / max of first searches for `--random` random queries (vocabulary words drawn by
frequency and uniformly, and pieces of 1-3 letters of them).

    python benchmarks/search.py [--features 1000000] [--vocab 20000] [--repeats 5]
        [--random 100] [--cases realistic,28-words] [--catalog FILE]

`--catalog` times the Catalog of another version of monoscope/serve/catalog.py (the one before
a change, say: `git show HEAD:monoscope/serve/catalog.py > /tmp/catalog_before.py`), loaded
from that file; the rest of the package is this checkout's.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run from a checkout without installing the package

COMMON = """the of and to in a is on that for with as or by from at this are be it an words
tokens token text about related references mentions phrases names numbers code python
programming language english french function variable list data after before end start
sentence word especially often context legal medical financial time dates years people places
cities countries proper nouns verbs adjectives pronouns plural past tense questions quotes
punctuation html tags urls brackets math equations digits chemistry biology sports music food
politics news science history games emotions negative positive ending suffix prefix subword
fragments don't it's isn't can't u.s. e.g. i.e. etc"""
"""Words common in explanations, most common first (whitespace-separated)."""
SYLLABLES = "ka lo mi ne ra to su vi the ing er an re on at en nd ti es or te of ed is it al"
WORDS_28 = """the code python list tokens words numbers names text about related to of and in
french legal medical dates music sports food math brackets html quotes don't verbs"""
QUERIES = {
    "realistic": ["the", "tokens", "tokens related", "{rare}", "zzz", "e", "don't"],
    "28-words": ["the", "code", "python list", "zzz", "e", "don't"],
}
"""Per set: a very common word, a common one, two common ones, a rare one (a made-up word of
rank 3/4 of the vocabulary), none, one letter, a word with an apostrophe."""


def vocabulary(n: int, rng: np.random.Generator) -> list[str]:
    """COMMON, then made-up words of 1-4 syllables, n distinct words in all."""
    words = list(dict.fromkeys(COMMON.split()))[:n]
    seen = set(words)
    while len(words) < n:
        word = "".join(rng.choice(SYLLABLES.split(), rng.integers(1, 5)))
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


def explanations(n: int, words: list[str], zipf: bool, seed: int = 0) -> list[str]:
    """n explanations of 5-12 of `words`, drawn Zipf-like (p ~ 1/rank) or uniformly."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, len(words) + 1) if zipf else np.ones(len(words))
    lengths = rng.integers(5, 13, n)
    picks = np.array(words, dtype=object)[rng.choice(len(words), lengths.sum(), p=p / p.sum())]
    marks = np.array(["", ",", ".", ";", ":", '"', "("], dtype=object)
    mark = marks[rng.choice(len(marks), len(picks), p=[0.86, 0.05, 0.03, 0.01, 0.01, 0.02, 0.02])]
    picks = np.where(
        mark == '"', '"' + picks + '"', np.where(mark == "(", "(" + picks + ")", picks)
    )
    picks = (picks + np.where((mark == '"') | (mark == "("), "", mark)).tolist()
    ends = np.cumsum(lengths)
    return [" ".join(picks[e - k : e]).capitalize() for e, k in zip(ends, lengths, strict=True)]


def columns(texts: list[str], seed: int = 1) -> dict:
    """The Catalog's columns for `texts`: random densities and activations, some scores."""
    rng = np.random.default_rng(seed)
    n = len(texts)
    score = rng.random(n).round(4)
    return {
        "density": rng.random(n).round(6),
        "max_act": rng.random(n).round(6),
        "mean_act": rng.random(n).round(6),
        "explanation": texts,
        "score": [None if s < 0.2 else float(s) for s in score],
        "top_tokens": [[] for _ in range(n)],
        "token_index": {},
        "has_map": False,
    }


def rss_kb(field: str) -> int:
    """A memory figure of this process from /proc/self/status, in KiB (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} line")


def first_and_second(cat, query: str, repeats: int) -> tuple[float, float, int]:
    """Median ms of a first search (kept words cleared) and of its second page; matches."""
    first, second = [], []
    for _ in range(repeats):
        cat._word_hits.clear()
        start = time.perf_counter()
        page = cat.search(query, "density", "desc", 0, 50)
        first.append(1000 * (time.perf_counter() - start))
        start = time.perf_counter()
        cat.search(query, "density", "desc", 50, 50)
        second.append(1000 * (time.perf_counter() - start))
    return statistics.median(first), statistics.median(second), page["total"]


def random_queries(words: list[str], n: int, seed: int = 2) -> list[str]:
    """n query words: vocabulary words by Zipf frequency and uniformly, and 1-3 letter pieces."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, len(words) + 1)
    queries = []
    for i in range(n):
        word = words[
            rng.choice(len(words), p=p / p.sum()) if i % 4 < 2 else rng.integers(len(words))
        ]
        if i % 4 == 3:
            start = int(rng.integers(len(word)))
            word = word[start : start + int(rng.integers(1, 4))]
        queries.append(word.lower())
    return queries


def load_catalog(path: str | None) -> ModuleType:
    """monoscope.serve.catalog, or the module of the file `path` (another version of it)."""
    if path is None:
        from monoscope.serve import catalog

        return catalog
    spec = importlib.util.spec_from_file_location("catalog_under_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks itself up there
    spec.loader.exec_module(module)
    return module


def measure(case: str, args: argparse.Namespace) -> dict:
    """Build one set's Catalog and time its searches (in this process)."""
    catalog_module = load_catalog(args.catalog)
    words = (
        vocabulary(args.vocab, np.random.default_rng(0))
        if case == "realistic"
        else WORDS_28.split()
    )
    cols = columns(explanations(args.features, words, zipf=case == "realistic"))
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM from here
    base = rss_kb("VmRSS")
    start = time.perf_counter()
    cat = catalog_module.Catalog(**cols)
    build_s = time.perf_counter() - start
    report = {
        "case": case,
        "module": catalog_module.__file__,
        "build_s": round(build_s, 2),
        "peak_growth_mib": round((rss_kb("VmHWM") - base) / 1024),
        "kept_mib": round((rss_kb("VmRSS") - base) / 1024),
    }
    cat.search("", "density", "desc")  # the sort's order, computed once for every query
    rare = words[len(words) * 3 // 4]
    for query in QUERIES[case]:
        query = query.format(rare=rare)
        first, second, total = first_and_second(cat, query, args.repeats)
        report[query] = {"first_ms": round(first, 1), "second_ms": round(second, 1), "n": total}
    times = [first_and_second(cat, q, 1)[0] for q in random_queries(words, args.random)]
    report["random"] = {
        "n": len(times),
        "p50_ms": round(float(np.percentile(times, 50)), 1),
        "p95_ms": round(float(np.percentile(times, 95)), 1),
        "max_ms": round(max(times), 1),
    }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", type=int, default=1_000_000, help="explanations")
    parser.add_argument("--vocab", type=int, default=20_000, help="distinct words (realistic)")
    parser.add_argument("--repeats", type=int, default=5, help="timings per query (median)")
    parser.add_argument("--random", type=int, default=100, help="random queries for p95")
    parser.add_argument("--cases", default="realistic,28-words")
    parser.add_argument("--catalog", help="time the Catalog of this catalog.py instead")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # one set, in this process
    args = parser.parse_args()
    if args.case:
        print(json.dumps(measure(args.case, args)))
        return
    for case in args.cases.split(","):
        child = [sys.executable, __file__, "--case", case]
        for flag in ("features", "vocab", "repeats", "random", "catalog"):
            if getattr(args, flag) is not None:
                child += [f"--{flag}", str(getattr(args, flag))]
        done = subprocess.run(child, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"{case} failed:\n{done.stderr[-3000:]}")
        report = json.loads(done.stdout.splitlines()[-1])
        print(f"\n{case}: {args.features:,} explanations; {report.pop('module')}")
        print(
            f"Catalog built in {report.pop('build_s')} s; peak RSS growth "
            f"{report.pop('peak_growth_mib')} MiB, kept {report.pop('kept_mib')} MiB"
        )
        random = report.pop("random")
        del report["case"]
        print(f"{'query':<22} {'matches':>9} {'first ms':>9} {'page 2 ms':>10}")
        for query, figures in report.items():
            first, second = figures["first_ms"], figures["second_ms"]
            print(f"{query:<22} {figures['n']:>9,} {first:>9} {second:>10}")
        print(
            f"{random['n']} random first searches: p50 {random['p50_ms']} ms, "
            f"p95 {random['p95_ms']} ms, max {random['max_ms']} ms"
        )


if __name__ == "__main__":
    main()
