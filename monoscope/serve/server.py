"""`monoscope serve`: the live browser on 127.0.0.1 (or --host), with "what fires", steering
and attribution."""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from monoscope.serve.app import create_app, require_server_extra
from monoscope.serve.fires import FiresEngine
from monoscope.serve.model import ServedModel
from monoscope.serve.steering import SteerEngine
from monoscope.serve.store import FeatureStore

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def open_app(db: str | Path, model: str | None = None):
    """(FastAPI app, FeatureStore) for `db`; FeatureStoreError if it cannot be browsed."""
    store = FeatureStore(db)
    served = ServedModel(store.meta, store.path, model=model)
    fires = FiresEngine(served, store.catalog, store.vocab)
    return create_app(store, fires, SteerEngine(served, store)), store


def serve(
    db: str | Path, host: str = "127.0.0.1", port: int = 8000, model: str | None = None
) -> None:
    """Serve the browser for `db` until interrupted."""
    require_server_extra()
    import uvicorn

    app, store = open_app(db, model)
    if not store.complete:
        print(
            f"warning: {db} is incomplete (analyze has seen {store.meta.get('tokens_seen', 0):,} "
            "tokens so far); the browser shows what is there",
            file=sys.stderr,
        )
    if host not in LOOPBACK:
        print(f"warning: listening on {host}: anyone who can reach it can browse", file=sys.stderr)
    shown = f"[{host}]" if ":" in host else host
    print(f"browsing {store.n_features:,} features of {db} at http://{shown}:{port}/")
    print("Ctrl+C stops the server")
    uvicorn.run(app, host=host, port=port, log_level="warning")


@contextmanager
def background_server(app, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run `app` with uvicorn in a thread; yields its base URL ("http://127.0.0.1:PORT/").

    port 0 picks a free port. For tests, benchmarks and notebooks; `serve` blocks instead."""
    require_server_extra()
    import uvicorn

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.bind((host, port))
    config = uvicorn.Config(app, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the browser server did not start")
            time.sleep(0.01)
        bound_port = sock.getsockname()[1]
        yield f"http://{host}:{bound_port}/"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
