"""Rows of the feature store's tables (see schema.py), written in one transaction, and the
Parquet export."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import count, repeat
from pathlib import Path

import numpy as np
from torch import Tensor

from monoscope.analyze.schema import open_readonly, write_meta
from monoscope.analyze.windows import Windows
from monoscope.artifacts import temp_file_beside

KINDS = ("top", "quantile", "random")
TABLES = ("meta", "features", "examples", "neighbours", "vocab")


def significant(x: Tensor, digits: int = 4) -> np.ndarray:
    """x rounded to `digits` significant digits, as float64 whose shortest repr is short
    (0.1234, not 0.12340000271797180), so the JSON stays small."""
    a = x.double().numpy()
    magnitude = np.floor(np.log10(np.abs(a), where=a != 0, out=np.zeros_like(a)))
    decimals = (digits - 1 - magnitude).astype(np.int64)
    up = np.power(10.0, np.clip(decimals, 0, 22))  # exact powers of ten
    down = np.power(10.0, np.clip(-decimals, 0, 22))
    return np.where(decimals >= 0, np.round(a * up) / up, np.round(a / down) * down)


@dataclass
class Examples:
    """Flat example list, [e] each: kind index into KINDS, bucket (-1: none)."""

    feature: Tensor
    kind: Tensor
    bucket: Tensor
    rank: Tensor
    activation: Tensor
    loc: Tensor


def example_rows(
    ex: Examples, windows: Iterator[tuple[Tensor, Windows]], context: int
) -> Iterator[tuple]:
    """Rows of the examples table: `windows` yields (indices into ex, their Windows) chunks,
    converted to Python objects a chunk at a time."""
    for part, w in windows:
        columns = zip(
            ex.feature[part].tolist(),
            ex.kind[part].tolist(),
            ex.bucket[part].tolist(),
            ex.rank[part].tolist(),
            ex.activation[part].tolist(),
            ex.loc[part].tolist(),
            w.centre.tolist(),
            w.length.tolist(),
            w.tokens.tolist(),
            significant(w.acts).tolist(),
            strict=True,
        )
        for feature, kind, bucket, rank, activation, loc, centre, n, tokens, acts in columns:
            yield (
                feature,
                KINDS[kind],
                rank,
                None if bucket < 0 else bucket,
                activation,
                loc // context,
                loc % context,
                json.dumps(tokens[:n]),
                json.dumps(acts[:n]),
                centre,
            )


@dataclass
class LogitEffects:
    """[F, n] each: top tokens (largest first) and bottom tokens (smallest first)."""

    top_ids: Tensor
    top_effects: Tensor
    bottom_ids: Tensor
    bottom_effects: Tensor


def _logit_json(ids: list[int], effects: list[float], vocab: list[str]) -> str:
    return json.dumps([[i, vocab[i], e] for i, e in zip(ids, effects, strict=True)])


ROWS_AT_A_TIME = 1 << 16
"""Features whose rows are turned into Python objects at a time (a million features' histograms
as one Python list would take gigabytes)."""


def feature_rows(
    n_fired: Tensor,
    tokens_seen: int,
    act_sum: Tensor,
    act_max: Tensor,
    hist: Tensor,
    logits: LogitEffects | None,
    vocab: list[str],
    coords: Tensor | None,
) -> Iterator[tuple]:
    density = n_fired.double() / max(tokens_seen, 1)
    mean = act_sum / n_fired.clamp_min(1)
    for start in range(0, n_fired.numel(), ROWS_AT_A_TIME):
        part = slice(start, start + ROWS_AT_A_TIME)
        columns = [n_fired[part], density[part], act_max[part], mean[part]]
        rows = zip(*(c.tolist() for c in columns), hist[part].tolist(), strict=True)
        logit_top: Iterator[str | None] = repeat(None)
        logit_bottom: Iterator[str | None] = repeat(None)
        if logits is not None:
            logit_top = _logit_column(logits.top_ids[part], logits.top_effects[part], vocab)
            logit_bottom = _logit_column(
                logits.bottom_ids[part], logits.bottom_effects[part], vocab
            )
        xy = coords[part].tolist() if coords is not None else repeat((None, None))
        for i, (fired, dens, most, average, counts), top, bottom, (x, y) in zip(
            count(start), rows, logit_top, logit_bottom, xy
        ):
            yield (i, fired, dens, most, average, json.dumps(counts), top, bottom, x, y)


def _logit_column(ids: Tensor, effects: Tensor, vocab: list[str]) -> Iterator[str]:
    pairs = zip(ids.tolist(), significant(effects).tolist(), strict=True)
    return (_logit_json(i, e, vocab) for i, e in pairs)


def neighbour_rows(index: Tensor, cosine: Tensor, cooccur: Tensor | None, n_fired: Tensor):
    k = index.shape[1]
    share = cooccur.double() / n_fired.clamp_min(1)[:, None] if cooccur is not None else None
    for start in range(0, index.shape[0], ROWS_AT_A_TIME):
        part = slice(start, start + ROWS_AT_A_TIME)
        cos = significant(cosine[part]).tolist()
        fired = n_fired[part].tolist()
        p = share[part].tolist() if share is not None else [[None] * k] * len(fired)
        for i, neighbours in enumerate(index[part].tolist()):
            for r in range(k):
                yield (start + i, r, neighbours[r], cos[i][r], p[i][r] if fired[i] else None)


def write_tables(
    conn: sqlite3.Connection,
    features: Iterator[tuple],
    examples: Iterator[tuple],
    neighbours: Iterator[tuple],
    vocab: list[str],
    meta: Callable[[], dict],
) -> None:
    """Replace the tables' rows and set the meta entries `meta()` returns once they are
    written, all in one transaction."""
    with conn:
        for table in ("features", "examples", "neighbours", "vocab"):
            conn.execute(f"DELETE FROM {table}")
        conn.executemany(
            "INSERT INTO features (id, n_fired, density, max_act, mean_act, hist, logit_top, "
            "logit_bottom, map_x, map_y) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            features,
        )
        conn.executemany(
            "INSERT INTO examples (feature, kind, rank, bucket, activation, context, position, "
            "tokens, acts, centre) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            examples,
        )
        conn.executemany("INSERT INTO neighbours VALUES (?, ?, ?, ?, ?)", neighbours)
        conn.executemany("INSERT INTO vocab VALUES (?, ?)", enumerate(vocab))
        write_meta(conn, **meta())


def require_pyarrow() -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise ImportError(
            "--export parquet needs pyarrow: pip install 'monoscope[parquet]'"
        ) from None


def export_parquet(db: Path, rows_per_batch: int = 1 << 16) -> list[Path]:
    """Write every table of the store at `db` as `<stem>.<table>.parquet` beside it, each
    atomically and `rows_per_batch` rows at a time; returns the paths."""
    require_pyarrow()
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrow_types = {"INTEGER": pa.int64(), "REAL": pa.float64(), "TEXT": pa.string()}
    written = []
    conn = open_readonly(db)
    try:
        for table in TABLES:
            columns = [
                (row[1], arrow_types[row[2]]) for row in conn.execute(f"PRAGMA table_info({table})")
            ]
            schema = pa.schema(columns)
            path = db.with_name(f"{db.stem}.{table}.parquet")
            fd, tmp = temp_file_beside(path)
            os.close(fd)
            try:
                with pq.ParquetWriter(tmp, schema) as writer:
                    cursor = conn.execute(f"SELECT * FROM {table}")
                    while rows := cursor.fetchmany(rows_per_batch):
                        values = zip(*rows, strict=True)
                        writer.write_batch(
                            pa.record_batch(
                                [
                                    pa.array(v, type=t)
                                    for v, (_, t) in zip(values, columns, strict=True)
                                ],
                                schema=schema,
                            )
                        )
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            written.append(path)
    finally:
        conn.close()
    return written
