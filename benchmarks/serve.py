"""Feature-browser server latency: the feature page and the search endpoint, p50 and p95.

The server is `monoscope serve` in a subprocess on 127.0.0.1; requests go one after another over
one keep-alive connection. The baseline is GET /config.js on the same server in the same run
(the HTTP and framework floor), so contention from other processes shows in both.

The default store is synthetic but schema-conformant (monoscope.testing.random_feature_store):
16,384 features with analyze's defaults of 20 top examples, 10 intervals x 3 samples and
32-token windows, built once at --db and reused. Pass a real store from `monoscope analyze`
with --db too. Target: p95 < 100 ms for both endpoints.

    python benchmarks/serve.py [--db PATH] [--features 16384] [--requests 300] [--export DIR]
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def build_store(path: Path, n_features: int) -> None:
    from monoscope.testing import random_feature_store

    words = [f" {w}" for w in ("the", "of", "bridge", "golden", "gate", "code", "def", "river")]
    vocab = ["<bos>", "\n", *words, *(f" tok{i}" for i in range(4990))]
    start = time.perf_counter()
    # Every feature explained, as after the interpret stage: a search then scans them all.
    topics = ["bridges", "Python code", "dates", "French text", "legal language", "numbers"]
    explanations = {i: f"{topics[i % 6]}, variant {i}" for i in range(n_features)}
    random_feature_store(
        path,
        n_features=n_features,
        vocab=vocab,
        quantile_examples=3,
        window=32,
        n_neighbours=10,
        explanations=explanations,
    )
    size = path.stat().st_size / 2**20
    print(
        f"built a synthetic store: {n_features:,} features, {size:.0f} MiB, "
        f"{time.perf_counter() - start:.0f} s -> {path}"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(db: Path, port: int) -> tuple[subprocess.Popen, float]:
    """`monoscope serve` in a subprocess; (process, seconds until it answered)."""
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "monoscope.cli", "serve", str(db), "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, time.perf_counter() - start
        except OSError:
            time.sleep(0.1)


def timed(conn: http.client.HTTPConnection, paths: list[str]) -> tuple[list[float], int]:
    """Latencies in ms of GETs of `paths`, in order; and the bytes received."""
    latencies, received = [], 0
    for path in paths:
        start = time.perf_counter()
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        latencies.append(1000 * (time.perf_counter() - start))
        if response.status != 200:
            raise SystemExit(f"GET {path}: {response.status} {body[:200]!r}")
        received += len(body)
    return latencies, received


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[round(q) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", help="feature store to serve (built here if missing)")
    parser.add_argument("--features", type=int, default=16_384, help="features of a built store")
    parser.add_argument("--requests", type=int, default=300, help="requests per endpoint")
    parser.add_argument("--export", help="also time `export-site` into this new folder")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    db = Path(args.db) if args.db else scratch / "features.db"
    if not db.exists():
        build_store(db, args.features)
    from monoscope.serve import FeatureStore

    start = time.perf_counter()
    store = FeatureStore(db)
    print(
        f"store: {store.n_features:,} features; opening it (meta, vocabulary, catalogue, "
        f"search index) takes {time.perf_counter() - start:.2f} s"
    )

    rng = random.Random(args.seed)
    n = args.requests
    tokens = sorted(store.catalog.token_index)
    feature_paths = [f"/api/features/{rng.randrange(store.n_features)}" for _ in range(n)]
    search_paths = []
    for i in range(n):
        kind = i % 4
        if kind == 0:  # a token
            query = {"query": rng.choice(tokens).strip() or "the"}
        elif kind == 1:  # a token, sorted by max activation
            query = {"query": rng.choice(tokens).strip(), "sort": "max_act", "order": "desc"}
        elif kind == 2:  # the whole list by density, a random page
            offset = rng.randrange(0, store.n_features, 50)
            query = {"sort": "density", "order": "desc", "offset": offset}
        else:  # an id
            query = {"query": f"#{rng.randrange(store.n_features)}"}
        search_paths.append("/api/features?" + "&".join(f"{k}={v}" for k, v in query.items()))

    port = free_port()
    proc, startup = start_server(db, port)
    print(f"server up in {startup:.1f} s (process start, imports, store open)")
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        timed(conn, ["/config.js", "/api/meta", *feature_paths[:10], *search_paths[:10]])  # warm
        # Interleaved in rounds, so a burst of contention hits every endpoint alike.
        results: dict[str, list[float]] = {"baseline": [], "feature": [], "search": []}
        sizes = {"feature": 0, "search": 0}
        rounds = 10
        for r in range(rounds):
            part = slice(r * n // rounds, (r + 1) * n // rounds)
            results["baseline"] += timed(conn, ["/config.js"] * (n // rounds))[0]
            lat, size = timed(conn, feature_paths[part])
            results["feature"] += lat
            sizes["feature"] += size
            lat, size = timed(conn, search_paths[part])
            results["search"] += lat
            sizes["search"] += size
        conn.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)

    base_p50 = percentile(results["baseline"], 50)
    print(f"\n{'endpoint':<34} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'p50/base':>9}  size")
    labels = {
        "baseline": "GET /config.js (baseline)",
        "feature": "GET /api/features/{id}",
        "search": "GET /api/features?query=...",
    }
    for key, lat in results.items():
        p50, p95 = percentile(lat, 50), percentile(lat, 95)
        size = f"{sizes[key] / len(lat) / 1024:.0f} KiB" if key in sizes else ""
        print(
            f"{labels[key]:<34} {p50:>8.1f} {p95:>8.1f} {max(lat):>8.1f} "
            f"{p50 / base_p50:>8.1f}x  {size}"
        )
    worst = max(percentile(results[k], 95) for k in ("feature", "search"))
    print(f"\ntarget p95 < 100 ms: {'met' if worst < 100 else 'MISSED'} (worst p95 {worst:.1f} ms)")

    if args.export:
        from monoscope.serve import export_site

        start = time.perf_counter()
        out = export_site(db, args.export)
        files = [p for p in out.rglob("*") if p.is_file()]
        size = sum(p.stat().st_size for p in files) / 2**20
        print(
            f"export-site: {time.perf_counter() - start:.1f} s, {len(files)} files, "
            f"{size:.0f} MiB -> {out}"
        )
    print(json.dumps({k: round(percentile(v, 95), 2) for k, v in results.items()}))
    shutil.rmtree(scratch)


if __name__ == "__main__":
    main()
