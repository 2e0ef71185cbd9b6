"""Big dictionaries downstream (issue 24, part 6): analyze, serve and export-site at 1M features.

Builds, in a scratch folder:
- an activation store of `--tokens` tokens (default 4,096) of the built-in model (SmolLM2-135M,
  blocks.15.hook_resid_post, d 576), harvested from the built-in corpus (or `--acts DIR`);
- a synthetic TopK SAE (k 32) of `--features` features (default 1,048,576) with random unit-norm
  decoder rows (`build_sae`, the encoder the decoder's transpose), saved as an SAE folder.
  At 1M x 576 each matrix is 2.3 GB: building and saving it takes about 14 GB for two minutes,
  in a subprocess that exits before anything is measured.

Then measures:
1. `monoscope analyze --no-logits --no-map` (a subprocess; the model is still loaded for the
   token texts): wall time, peak RSS (/usr/bin/time -v), the time of each stage
   (meta.seconds), the accumulator's state per feature, which neighbour search ran and the
   recall of the stored neighbours against an exact search of 256 random features. Logit
   effects (F x vocab x d work) and the UMAP map are left out: both are fixed, separate costs
   (`--logits`, `--map` add them); without `--map`, random map coordinates are written into
   the store so that the map endpoint has a million points to send or sample;
2. `monoscope serve` (a subprocess on 127.0.0.1, one keep-alive connection): p50/p95 of a
   feature page (random ids, fired ones half the time), a page of the list (sorted by density,
   random offsets), a search (tokens; ids), the map, against GET /config.js; target p95 < 50 ms;
3. `monoscope export-site`: wall time, size, number of files, largest file.

Start small to see what breaks (`--features 65536` takes a few minutes), then 1M (about
30-60 minutes on 2 busy CPU cores; past AnalyzeConfig.exact_neighbours features the neighbour
search is the approximate one, as the exact one would take hours).

    python benchmarks/bigdict.py [--features 1048576] [--tokens 4096] [--acts DIR]
        [--requests 200] [--tmp DIR] [--keep] [--logits] [--map] [--skip-export]
        [--skip-analyze (with --tmp: serve and export the store kept there)]
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run from a checkout without installing the package

import cli_rss  # noqa: E402  (benchmarks/cli_rss.py, beside this script)
from serve import free_port, percentile, start_server, timed  # noqa: E402  (benchmarks/serve.py)

MODEL, SITE, D_IN = "smollm2-135m", "blocks.15.hook_resid_post", 576

_BUILD_SAE = f"""
import sys
from monoscope.sae import SAEConfig, build_sae
n, out = int(sys.argv[1]), sys.argv[2]
cfg = SAEConfig(arch="topk", d_in={D_IN}, n_features=n, k=32, site="{SITE}", model="{MODEL}")
build_sae(cfg, seed=0).save(out)
"""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", type=int, default=1 << 20, help="dictionary size")
    parser.add_argument("--tokens", type=int, default=4096, help="tokens harvested")
    parser.add_argument("--acts", help="an existing store of smollm2-135m at blocks.15")
    parser.add_argument("--requests", type=int, default=200, help="requests per endpoint")
    parser.add_argument("--tmp", help="scratch folder (default: a new temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("--logits", action="store_true", help="analyze with logit effects")
    parser.add_argument("--map", action="store_true", help="analyze with the UMAP map")
    parser.add_argument("--skip-export", action="store_true")
    parser.add_argument(
        "--skip-analyze", action="store_true", help="serve and export the store a run kept in --tmp"
    )
    return parser.parse_args()


def run_cli(cli: list[str]) -> float:
    """Run `monoscope *cli` quietly; wall seconds. SystemExit with its stderr if it fails."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "monoscope.cli", *cli], cwd=REPO, capture_output=True, text=True
    )
    if proc.returncode:
        raise SystemExit(f"monoscope {cli[0]} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def build_inputs(args: argparse.Namespace, scratch: Path) -> tuple[Path, Path]:
    """(activation store, SAE folder), made in `scratch` unless given."""
    acts = Path(args.acts) if args.acts else scratch / "acts"
    if not (acts / "manifest.json").exists():
        seconds = run_cli(
            [
                *("harvest", "--model", MODEL, "--site", SITE, "--tokens", str(args.tokens)),
                *("--out", str(acts), "--no-progress", "--heldout-fraction", "0"),
            ]
        )
        print(f"harvested {args.tokens:,} tokens in {seconds:.0f} s -> {acts}")
    sae = scratch / f"sae-{args.features}"
    if not (sae / "weights.safetensors").exists():
        start = time.perf_counter()
        code = subprocess.run([sys.executable, "-c", _BUILD_SAE, str(args.features), str(sae)])
        if code.returncode:
            raise SystemExit("building the SAE failed")
        size = (sae / "weights.safetensors").stat().st_size / 2**30
        print(
            f"built a random topk SAE: {args.features:,} x {D_IN}, {size:.1f} GiB, "
            f"{time.perf_counter() - start:.0f} s -> {sae}"
        )
    return acts, sae


def measure_analyze(args: argparse.Namespace, acts: Path, sae: Path, db: Path) -> dict:
    cli = ["analyze", "--sae", str(sae), "--acts", str(acts), "--out", str(db)]
    cli += ["--logits" if args.logits else "--no-logits", "--map" if args.map else "--no-map"]
    cli += ["--no-progress", "--overwrite"]
    rss_kb, wall = cli_rss.peak_rss(cli)
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    meta = {k: json.loads(v) for k, v in conn.execute("SELECT key, value FROM meta")}
    rows = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("examples",)}
    conn.close()
    from monoscope.analyze import AnalyzeConfig
    from monoscope.analyze.accumulate import state_bytes_per_feature

    per_feature = state_bytes_per_feature(AnalyzeConfig())
    result = {
        "analyze_s": round(wall, 1),
        "analyze_peak_rss_gib": round(rss_kb / 2**20, 2),
        "weights_gib": round(2 * args.features * D_IN * 4 / 2**30, 2),
        "accumulator_bytes_per_feature": per_feature,
        "accumulator_gib": round(per_feature * args.features / 2**30, 2),
        "stages_s": meta["seconds"],
        "tokens": meta["tokens_seen"],
        "examples": rows["examples"],
        "neighbour_search": meta.get("neighbour_search"),
        "db_mib": round(db.stat().st_size / 2**20, 1),
    }
    print(f"analyze: {json.dumps(result)}")
    return result


def neighbour_recall(sae: Path, db: Path, sample: int = 256) -> float:
    """Share of the exact 10 nearest neighbours (by decoder cosine) of `sample` random features
    that the store's neighbours table holds: 1.0 for the exact search."""
    import torch
    from safetensors import safe_open

    from monoscope.analyze.neighbours import nearest_of, unit_rows

    with safe_open(str(sae / "weights.safetensors"), "pt") as f:
        unit = unit_rows(f.get_tensor("W_dec"))
    query = torch.randperm(unit.shape[0], generator=torch.Generator().manual_seed(0))[:sample]
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    stored = {
        (f, n)
        for q in query.tolist()
        for f, n in conn.execute(
            "SELECT feature, neighbour FROM neighbours WHERE feature = ?", (q,)
        )
    }
    conn.close()
    k = len(stored) // sample
    exact, _ = nearest_of(unit, query, k)
    hits = sum(
        (f, n) in stored for f, row in zip(query.tolist(), exact.tolist(), strict=True) for n in row
    )
    return round(hits / exact.numel(), 3)


def add_map(db: Path) -> None:
    """Random map coordinates for every feature (UMAP of 1M points takes far longer than the
    rest): the map endpoint then has all of them to send, or sample."""
    import numpy as np

    conn = sqlite3.connect(db)
    n = conn.execute("SELECT count(*) FROM features").fetchone()[0]
    xy = np.random.default_rng(0).normal(size=(n, 2)).round(4).tolist()
    with conn:
        conn.executemany(
            "UPDATE features SET map_x = ?, map_y = ? WHERE id = ?",
            ((x, y, i) for i, (x, y) in enumerate(xy)),
        )
    conn.close()


def request_paths(db: Path, n: int, seed: int) -> dict[str, list[str]]:
    """Per endpoint kind, n GET paths."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    fired = [r[0] for r in conn.execute("SELECT id FROM features WHERE n_fired > 0")]
    n_features = conn.execute("SELECT count(*) FROM features").fetchone()[0]
    vocab = [r[0] for r in conn.execute("SELECT text FROM vocab WHERE id < 2000")]
    conn.close()
    rng = random.Random(seed)
    words = [w.strip() for w in vocab if w.strip().isalpha()] or ["the"]
    paths: dict[str, list[str]] = {"feature": [], "list": [], "search": [], "map": []}
    for i in range(n):
        fid = rng.choice(fired) if i % 2 and fired else rng.randrange(n_features)
        paths["feature"].append(f"/api/features/{fid}")
        offset = rng.randrange(0, n_features, 50)
        order = ("asc", "desc")[i % 2]
        paths["list"].append(f"/api/features?sort=density&order={order}&offset={offset}")
        query = rng.choice(words) if i % 3 else f"%23{rng.randrange(n_features)}"
        sort = ("id", "max_act", "density")[i % 3]
        paths["search"].append(f"/api/features?query={query}&sort={sort}&order=desc")
        paths["map"].append("/api/map")
    return paths


def measure_serve(db: Path, n: int) -> dict:
    paths = request_paths(db, n, seed=0)
    port = free_port()
    proc, startup = start_server(db, port)
    results: dict[str, list[float]] = {"baseline": [], **{k: [] for k in paths}}
    sizes = dict.fromkeys(results, 0)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        timed(conn, ["/config.js", "/api/meta"] + [p[0] for p in paths.values()])  # warm
        rounds = 10
        for r in range(rounds):
            part = slice(r * n // rounds, (r + 1) * n // rounds)
            results["baseline"] += timed(conn, ["/config.js"] * (n // rounds))[0]
            for kind, kind_paths in paths.items():
                latencies, size = timed(conn, kind_paths[part])
                results[kind] += latencies
                sizes[kind] += size
        conn.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    report = {"serve_startup_s": round(startup, 1)}
    print(f"\nserver up in {startup:.1f} s")
    print(f"{'endpoint':<10} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'KiB/response':>13}")
    for kind, latencies in results.items():
        p50, p95 = percentile(latencies, 50), percentile(latencies, 95)
        kib = sizes[kind] / len(latencies) / 1024
        print(f"{kind:<10} {p50:>8.1f} {p95:>8.1f} {max(latencies):>8.1f} {kib:>13.1f}")
        report[f"{kind}_p95_ms"] = round(p95, 1)
        report[f"{kind}_kib"] = round(kib, 1)
    worst = max(report[f"{k}_p95_ms"] for k in ("feature", "list", "search"))
    print(f"target p95 < 50 ms (feature, list, search): {'met' if worst < 50 else 'MISSED'}")
    return report


def measure_export(db: Path, out: Path) -> dict:
    rss_kb, wall = cli_rss.peak_rss(["export-site", str(db), "--out", str(out), "--similar", "0"])
    files = [p for p in out.rglob("*") if p.is_file()]
    largest = max(files, key=lambda p: p.stat().st_size)
    report = {
        "export_s": round(wall, 1),
        "export_peak_rss_gib": round(rss_kb / 2**20, 2),
        "export_mib": round(sum(p.stat().st_size for p in files) / 2**20, 1),
        "export_files": len(files),
        "export_largest": f"{largest.relative_to(out)} {largest.stat().st_size / 2**20:.2f} MiB",
    }
    print(f"export-site: {json.dumps(report)}")
    return report


def main() -> None:
    args = parse_args()
    scratch = Path(args.tmp) if args.tmp else Path(tempfile.mkdtemp(prefix="bigdict-"))
    scratch.mkdir(parents=True, exist_ok=True)
    print(
        f"{args.features:,} features; scratch folder {scratch}; peak RSS by "
        f"{cli_rss.how_measured()}"
    )
    try:
        acts, sae = build_inputs(args, scratch)
        db = scratch / f"features-{args.features}.db"
        report: dict = {"features": args.features}
        if not args.skip_analyze:
            report.update(measure_analyze(args, acts, sae, db))
            report["neighbour_recall"] = neighbour_recall(sae, db)
            print(f"neighbour recall against the exact search: {report['neighbour_recall']}")
            if not args.map:
                add_map(db)
        report.update(measure_serve(db, args.requests))
        if not args.skip_export:
            report.update(measure_export(db, scratch / "site"))
        print(json.dumps(report))
    finally:
        if not args.keep and not args.tmp:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
