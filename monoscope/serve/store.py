"""`FeatureStore`: a feature store opened read-only for browsing.

Meta, the vocabulary and the catalogue (one summary per feature, the search index) are read
once and kept in memory; the per-feature rows are queried on demand through one read-only
SQLite connection per thread (the web server answers requests from a thread pool).
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from monoscope.analyze.schema import FeatureStoreError, open_readonly, read_meta
from monoscope.serve.catalog import Catalog
from monoscope.serve.interpretation import has_interpretation
from monoscope.serve.records import feature_records, map_record, meta_record


class FeatureNotFound(KeyError):
    """A feature id outside 0..n_features-1 (or not a number)."""

    def __str__(self) -> str:  # KeyError's own would quote the message
        return str(self.args[0])


class FeatureStore:
    """Read-only view of one feature store (see monoscope/analyze/schema.py)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._local = threading.local()
        self._map: dict[str, Any] | None = None
        with _clear_sqlite_errors(self.path):
            conn = self.connection()
            self.meta: dict[str, Any] = read_meta(conn)
            self.vocab: list[str] = _read_vocab(conn)
            self.catalog = Catalog.load(conn, self.vocab)
            self.interpreted = has_interpretation(conn)
        self.n_features = self.catalog.n_features
        self.complete = bool(self.meta.get("complete", False))
        if not self.complete and self.n_features == 0:
            raise FeatureStoreError(
                f"{self.path} is incomplete: `monoscope analyze` has not written its features "
                f"yet ({self.meta.get('tokens_seen', 0):,} tokens seen); rerun it to finish, "
                "then browse"
            )

    def connection(self) -> sqlite3.Connection:
        """This thread's read-only connection (SQLite connections stay in their thread)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = open_readonly(self.path)
        return conn

    def meta_record(self) -> dict[str, Any]:
        return meta_record(self.meta, self.catalog, self.interpreted)

    def feature_id(self, text: str | int) -> int:
        """Parse and range-check a feature id; FeatureNotFound otherwise."""
        if not isinstance(text, int) and not re.fullmatch(r"[0-9]+", str(text)):
            raise FeatureNotFound(f"no feature {text!r}: ids are integers")
        fid = int(text)
        if not 0 <= fid < self.n_features:
            raise FeatureNotFound(f"no feature {fid}: this store has ids 0..{self.n_features - 1}")
        return fid

    def feature(self, fid: str | int) -> dict[str, Any]:
        """The full record of one feature (the feature page's data)."""
        fid = self.feature_id(fid)
        return self.feature_range(fid, fid + 1)[0]

    def feature_range(self, start: int, stop: int) -> list[dict[str, Any]]:
        """Records of features start..stop-1 (one shard of the static site)."""
        with _clear_sqlite_errors(self.path):
            return feature_records(
                self.connection(), self.catalog, self.vocab, start, stop, self.interpreted
            )

    def map(self) -> dict[str, Any]:
        """The map's points (records.map_record), read once: the store does not change."""
        if self._map is None:
            with _clear_sqlite_errors(self.path):
                self._map = map_record(self.connection())
        return self._map


def _read_vocab(conn: sqlite3.Connection) -> list[str]:
    """Token texts indexed by token id ('' for ids the table skips)."""
    rows = conn.execute("SELECT id, text FROM vocab ORDER BY id").fetchall()
    vocab = [""] * (rows[-1][0] + 1 if rows else 0)
    for tid, text in rows:
        vocab[tid] = text
    return vocab


@contextmanager
def _clear_sqlite_errors(path: Path) -> Iterator[None]:
    """Turn SQLite's terse errors into FeatureStoreErrors that say what to do."""
    try:
        yield
    except (sqlite3.DatabaseError, FeatureStoreError) as err:
        if "locked" in f"{err} {err.__cause__}":
            raise FeatureStoreError(
                f"{path} is locked by another process (is `monoscope analyze` still writing "
                "it?); try again when it has finished"
            ) from err
        if isinstance(err, FeatureStoreError):
            raise
        raise FeatureStoreError(f"{path}: unreadable feature store: {err}") from err
