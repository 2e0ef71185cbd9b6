"""Feature-browser server under concurrent load: 1, 10 and 50 clients on the feature pages, the
list and the search; throughput, p50/p95 latency and errors per level.

The server is `monoscope serve --port 0` in a subprocess on 127.0.0.1 (its own process, so the
clients' threads do not share its interpreter lock); each client is a thread with its own
keep-alive connection, sending GETs in turn from a seeded mix: a feature page at a random id, a
random page of the density-sorted list, a search (a token, or a word of the explanations).
Every level is bounded: each client stops after --requests requests or once the level has run
--seconds, whichever comes first. An error is a non-200 answer or a failed connection.

The default store is synthetic (monoscope.testing.random_feature_store, --features features,
every one explained so a search scans them all), built in a temp folder in seconds; --db takes
a real store.

    python benchmarks/serve_load.py [--db PATH] [--features 2048] [--clients 1,10,50]
                                    [--requests 200] [--seconds 20]
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit

KINDS = ("feature", "list", "search")


@dataclass
class Tally:
    """What the clients of one level saw: latencies in ms per kind, and the errors."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in KINDS})
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def build_store(path: Path, n_features: int) -> None:
    from monoscope.testing import random_feature_store

    topics = ["bridges", "Python code", "dates", "French text", "legal language", "numbers"]
    explanations = {i: f"{topics[i % 6]}, variant {i}" for i in range(n_features)}
    start = time.perf_counter()
    random_feature_store(path, n_features=n_features, explanations=explanations, window=32)
    print(
        f"built a synthetic store of {n_features:,} features in {time.perf_counter() - start:.0f} s"
    )


def start_server(db: Path) -> tuple[subprocess.Popen, str]:
    """`monoscope serve DB --port 0`; (process, its base URL as it printed it)."""
    cmd = [sys.executable, "-m", "monoscope.cli", "serve", str(db), "--port", "0"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    for line in proc.stdout:
        found = re.search(r"at (http://\S+)", line)
        if found:
            return proc, found.group(1)
    raise SystemExit(f"the server exited with {proc.wait()} before saying where it listens")


def request_mix(store, n: int, seed: int) -> list[tuple[str, str]]:
    """n (kind, path) pairs over `store` (a FeatureStore), the kinds in turn."""
    rng = random.Random(seed)
    tokens = [t for t in sorted(store.catalog.token_index) if t.strip()] or ["the"]
    words = sorted(
        {w.strip(",").lower() for e in store.catalog.explanation if e for w in e.split()}
    )
    paths = []
    for i in range(n):
        kind = KINDS[i % 3]
        if kind == "feature":
            path = f"/api/features/{rng.randrange(store.n_features)}"
        elif kind == "list":
            offset = rng.randrange(0, store.n_features, 50)
            path = f"/api/features?sort=density&order=desc&offset={offset}&limit=50"
        else:
            query = rng.choice(words if words and i % 2 else tokens).strip()
            path = f"/api/features?query={quote(query)}&limit=50"
        paths.append((kind, path))
    return paths


def client(url: str, mix: list[tuple[str, str]], deadline: float, tally: Tally) -> None:
    """GET the mix in order over one keep-alive connection until it ends or the deadline."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        for kind, path in mix:
            if time.perf_counter() > deadline:
                break
            start = time.perf_counter()
            try:
                conn.request("GET", path)
                response = conn.getresponse()
                response.read()
                error = None if response.status == 200 else f"{response.status} {path}"
            except (OSError, http.client.HTTPException) as err:
                error = f"{type(err).__name__} {path}"
                conn.close()
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
            ms = 1000 * (time.perf_counter() - start)
            with tally.lock:
                if error:
                    tally.errors.append(error)
                else:
                    tally.latencies[kind].append(ms)
    finally:
        conn.close()


def run_level(url: str, mixes: list[list[tuple[str, str]]], seconds: float) -> tuple[Tally, float]:
    tally = Tally()
    start = time.perf_counter()
    threads = [
        threading.Thread(target=client, args=(url, mix, start + seconds, tally)) for mix in mixes
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return tally, time.perf_counter() - start


def pct(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def report(n_clients: int, tally: Tally, wall: float) -> None:
    every = [ms for lat in tally.latencies.values() for ms in lat]
    done = len(every) + len(tally.errors)
    cells = [f"{n_clients:>7}", f"{done:>8}", f"{len(tally.errors):>6}", f"{wall:>6.1f}"]
    cells.append(f"{len(every) / wall:>7.1f}")
    for lat in (every, *tally.latencies.values()):
        cells.append(f"{pct(lat, 50):>6.1f} {pct(lat, 95):>6.1f}")
    print("  ".join(cells))
    for error in sorted(set(tally.errors))[:5]:
        print(f"        error: {error} (x{tally.errors.count(error)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", help="feature store to serve (default: a synthetic one)")
    parser.add_argument("--features", type=int, default=2048, help="features of a built store")
    parser.add_argument("--clients", default="1,10,50", help="concurrency levels, in order")
    parser.add_argument("--requests", type=int, default=200, help="most requests per client")
    parser.add_argument("--seconds", type=float, default=20, help="most seconds per level")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="serve-load-"))
    try:
        db = Path(args.db) if args.db else scratch / "features.db"
        if not args.db:
            build_store(db, args.features)
        from monoscope.serve import FeatureStore

        store = FeatureStore(db)
        proc, url = start_server(db)
        try:
            print(f"server at {url} for {db}")
            client(url, request_mix(store, 30, args.seed + 999), time.perf_counter() + 60, Tally())
            print(
                f"\n{'clients':>7}  {'requests':>8}  {'errors':>6}  {'s':>6}  {'req/s':>7}  "
                + "  ".join(f"{k + ' p50':>6} {'p95':>6}" for k in ("all", *KINDS))
            )
            for level, n_clients in enumerate(int(c) for c in args.clients.split(",")):
                mixes = [
                    request_mix(store, args.requests, args.seed + 1000 * level + c)
                    for c in range(n_clients)
                ]
                report(n_clients, *run_level(url, mixes, args.seconds))
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    finally:
        shutil.rmtree(scratch)
    print("(latencies in ms; req/s counts answered requests over the level's wall time)")


if __name__ == "__main__":
    main()
