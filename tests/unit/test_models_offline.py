"""load_model with no network: an unknown hub id fails in seconds, a cached model still loads;
with a hub (a minimal one on loopback), models download as before and missing ones are named.

Each case runs in a child process: the hub client reads HF_ENDPOINT, HF_HOME and HF_HUB_OFFLINE
once, at import, and conftest sets HF_HUB_OFFLINE=1 in this one.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from monoscope.testing import save_tiny_model

CACHED_ID = "someone/tiny-cached"
COMMIT = "0123456789abcdef0123456789abcdef01234567"

CHILD = """
import json, sys, time
from monoscope.models import load_model
for name in sys.argv[1:]:
    start = time.perf_counter()
    try:
        lm = load_model(name, device="cpu")
        out = {"ok": True, "revision": lm.revision, "layers": lm.n_layers}
    except ValueError as err:
        out = {"ok": False, "error": str(err), "type": type(err).__name__}
    out["seconds"] = time.perf_counter() - start
    print(json.dumps(out))
"""


def closed_port() -> int:
    """A loopback port nothing listens on: bound, then released."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def hf_cache_with_tiny_model(hf_home: Path) -> None:
    """A tiny model laid out as the hub client caches a download (refs/main -> a snapshot)."""
    repo = hf_home / "hub" / f"models--{CACHED_ID.replace('/', '--')}"
    save_tiny_model(repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)


def load_in_child(tmp_path: Path, names: list[str], **env: str) -> list[dict]:
    child_env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_ENDPOINT")}
    child_env.update(HF_HOME=str(tmp_path / "hf"), **env)
    done = subprocess.run(
        [sys.executable, "-c", CHILD, *names],
        env=child_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


@pytest.mark.parametrize("offline", [False, True], ids=["hub-unreachable", "HF_HUB_OFFLINE"])
def test_unknown_id_fails_fast_and_cached_model_loads_without_network(tmp_path, offline):
    hf_cache_with_tiny_model(tmp_path / "hf")
    endpoint = f"http://127.0.0.1:{closed_port()}"
    env = {"HF_ENDPOINT": endpoint} | ({"HF_HUB_OFFLINE": "1"} if offline else {})
    unknown, cached = load_in_child(tmp_path, ["nobody/no-such-model", CACHED_ID], **env)

    # Before: two rounds of the hub client's retries with backoff, about 50 s.
    assert not unknown["ok"] and unknown["type"] == "ModelNotFoundError"
    assert unknown["seconds"] < 10
    message = unknown["error"]
    assert "'nobody/no-such-model'" in message and "\n" not in message
    assert str(tmp_path / "hf" / "hub") in message  # the cache that was searched
    assert "folder saved with save_pretrained" in message
    if offline:
        assert "HF_HUB_OFFLINE is set" in message
    else:
        assert f"the hub at {endpoint} is unreachable" in message

    assert cached["ok"], cached
    assert cached["revision"] == COMMIT and cached["layers"] == 3
    assert cached["seconds"] < 10


class TinyHub(http.server.BaseHTTPRequestHandler):
    """The hub's file API for one repo, CACHED_ID at commit COMMIT, served from `folder`; any
    other repo is missing (as the hub answers: 404 with an X-Error-Code header)."""

    folder: Path

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _answer(self, body: bool) -> None:
        path = self.path.split("?")[0]
        resolve = f"/{CACHED_ID}/resolve/"
        file = self.folder / path.removeprefix(resolve).partition("/")[2]
        if path.startswith(f"/api/models/{CACHED_ID}/tree/") or (
            path.startswith(resolve) and not file.is_file()
        ):
            return self._missing("EntryNotFound")
        if not path.startswith(resolve):
            return self._missing("RepoNotFound")
        data = file.read_bytes()
        self.send_response(200)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def _missing(self, code: str) -> None:
        self.send_response(404)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def tiny_hub(folder: Path) -> Iterator[str]:
    handler = type("Handler", (TinyHub,), {"folder": folder})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_reachable_hub_still_serves_models_and_names_missing_ones(tmp_path):
    with tiny_hub(save_tiny_model(tmp_path / "served")) as endpoint:
        found, missing = load_in_child(
            tmp_path, [CACHED_ID, "nobody/no-such-model"], HF_ENDPOINT=endpoint
        )
    assert found["ok"], found
    assert found["revision"] == COMMIT and found["layers"] == 3  # pinned to the hub's commit
    assert not missing["ok"] and missing["type"] == "ModelNotFoundError"
    assert f"the hub at {endpoint} answered 404 (RepositoryNotFoundError" in missing["error"]
    assert "check the id" in missing["error"]
