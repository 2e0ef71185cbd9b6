"""`CallCache`: every LLM call's answer in SQLite, addressed by the content of the call, so a
rerun or a resumed run pays nothing for what it already has.

The key is the sha256 of the canonical JSON of {backend, model, request}: everything that
decides the answer. The endpoint (--base-url) is deliberately left out: the same model behind
another address (a new port, a tunnel, a restarted server) gives the same answers, and a cache
that keyed on the address would pay for them again. The model name is trusted to name the
weights; point a different model at the same name and the cache answers for the old one.

Each answer is committed as it arrives (WAL journal), so a kill -9 loses at most the calls in
flight. API keys never reach this file: nothing written here comes from the environment.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from monoscope.interpret.backends.base import ChatRequest, ChatResponse

SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    key TEXT PRIMARY KEY,
    backend TEXT NOT NULL,
    model TEXT NOT NULL,
    request TEXT NOT NULL,
    response TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    latency_s REAL NOT NULL,
    cost_usd REAL,
    created_at REAL NOT NULL
)
"""


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def call_key(backend: str, model: str, request: ChatRequest) -> str:
    """The content address of one call (64 hex digits)."""
    payload = {"backend": backend, "model": model, "request": request.as_dict()}
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


class CallCache:
    """A thread-safe SQLite table of calls; several processes may share the file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # Autocommit: each put is its own transaction, durable when it returns.
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=30000")
        self._db.execute(SCHEMA)

    def get(self, key: str) -> tuple[ChatResponse, dict[str, Any]] | None:
        """(response, meta) for `key`, meta holding the tokens, latency, cost and time of the
        original call; None when the cache does not hold it."""
        with self._lock:
            row = self._db.execute(
                "SELECT response, prompt_tokens, completion_tokens, latency_s, cost_usd, "
                "created_at FROM calls WHERE key = ?",
                (key,),
            ).fetchone()
        if row is None:
            return None
        names = ("prompt_tokens", "completion_tokens", "latency_s", "cost_usd", "created_at")
        return ChatResponse.from_dict(json.loads(row[0])), dict(zip(names, row[1:], strict=True))

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return (
                self._db.execute("SELECT 1 FROM calls WHERE key = ?", (key,)).fetchone() is not None
            )

    def put(
        self,
        key: str,
        backend: str,
        model: str,
        request: ChatRequest,
        response: ChatResponse,
        latency_s: float,
        cost_usd: float | None,
    ) -> None:
        """Store one answered call, committed before returning; the first answer for a key
        wins (two threads racing on the same call both paid, and both answers are valid)."""
        row = (
            key,
            backend,
            model,
            canonical_json(request.as_dict()),
            canonical_json(response.as_dict()),
            response.prompt_tokens,
            response.completion_tokens,
            latency_s,
            cost_usd,
            time.time(),
        )
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO calls VALUES (?,?,?,?,?,?,?,?,?,?)", row)

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM calls").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
