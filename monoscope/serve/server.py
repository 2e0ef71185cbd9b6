"""`monoscope serve`: the live browser on 127.0.0.1 (or --host), with "what fires", steering
and attribution."""

from __future__ import annotations

import sys
from pathlib import Path

from monoscope.runtime import resolve_device
from monoscope.serve.app import create_app
from monoscope.serve.fires import FiresEngine
from monoscope.serve.model import ServedModel
from monoscope.serve.steering import SteerEngine
from monoscope.serve.store import FeatureStore
from monoscope.web.server import (
    LOOPBACK,
    base_url,
    listening_socket,
    require_server_extra,
    run_on,
)


def open_app(db: str | Path, model: str | None = None, device: str = "auto"):
    """(FastAPI app, FeatureStore) for `db`, running the model and SAE on `device` (see
    `resolve_device`: a device that is not there fails here, not on a request);
    FeatureStoreError if it cannot be browsed."""
    on = resolve_device(device)  # before the store opens: a bad --device is the first error
    store = FeatureStore(db)
    served = ServedModel(store.meta, store.path, model=model, device=on)
    fires = FiresEngine(served, store.catalog, store.vocab)
    return create_app(store, fires, SteerEngine(served, store)), store


def serve(
    db: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    model: str | None = None,
    device: str = "auto",
) -> None:
    """Serve the browser for `db` until interrupted, the model and SAE on `device`."""
    require_server_extra()
    app, store = open_app(db, model, device)
    if not store.complete:
        print(
            f"warning: {db} is incomplete (analyze has seen {store.meta.get('tokens_seen', 0):,} "
            "tokens so far); the browser shows what is there",
            file=sys.stderr,
        )
    sock = listening_socket(host, port)  # before saying where: a taken port is one line
    if host not in LOOPBACK:
        print(f"warning: listening on {host}: anyone who can reach it can browse", file=sys.stderr)
    print(f"browsing {store.n_features:,} features of {db} at {base_url(sock)}")
    print("Ctrl+C stops the server")
    run_on(app, sock, host)
