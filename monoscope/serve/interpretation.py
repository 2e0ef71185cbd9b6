"""The interpret stage's rows as the browser shows them: each feature's explanations, its scores
with their chance levels, and the judged held-out examples (tables in analyze/schema.py; a
version-1 store has none, and every feature reads as unexplained).
"""

from __future__ import annotations

import json
import math
import sqlite3
from typing import Any

from monoscope.analyze.schema import FeatureStoreError, has_table
from monoscope.interpret.store import HEADLINE_ORDER
from monoscope.serve.catalog import round_sig

SCORER_METRICS = {
    "detection": "balanced accuracy",
    "fuzzing": "balanced accuracy",
    "simulation": "Pearson r",
    "embedding": "AUROC",
}
"""What each scorer's headline number is."""


def has_interpretation(conn: sqlite3.Connection) -> bool:
    """Whether the store has the interpret stage's tables (schema version 2)."""
    return has_table(conn, "explanations") and has_table(conn, "scores")


def interpretation_records(
    conn: sqlite3.Connection, start: int, stop: int
) -> dict[int, dict[str, list[dict[str, Any]]]]:
    """{feature: {"explanations": [...], "scores": [...]}} for the features start..stop-1 that
    have rows; shapes in records.py. Explanations newest first; scores grouped by the
    explanation they score, then in HEADLINE_ORDER."""
    out: dict[int, dict[str, list[dict[str, Any]]]] = {}

    def entry(fid: int) -> dict[str, list[dict[str, Any]]]:
        return out.setdefault(fid, {"explanations": [], "scores": []})

    for fid, explainer, version, status, text, raw, created in conn.execute(
        "SELECT feature, explainer, prompt_version, status, explanation, raw, created_at "
        "FROM explanations WHERE feature >= ? AND feature < ? "
        "ORDER BY feature, created_at DESC, rowid DESC",
        (start, stop),
    ):
        entry(fid)["explanations"].append(
            {
                "explainer": explainer,
                "prompt_version": version,
                "status": status,
                "explanation": text,
                "raw": raw,
                "created_at": created,
            }
        )
    rank = {name: i for i, name in enumerate(HEADLINE_ORDER)}
    rows = conn.execute(
        "SELECT feature, scorer, judge, explainer, prompt_version, scorer_version, status, "
        "score, chance, explanation, metrics, details, created_at FROM scores "
        "WHERE feature >= ? AND feature < ?",
        (start, stop),
    ).fetchall()
    rows.sort(key=lambda r: (r[0], r[3], r[4], rank.get(r[1], len(rank)), r[1], r[2], r[5]))
    for row in rows:
        entry(row[0])["scores"].append(_score_record(row))
    return out


def judged_keys(scores: list[dict[str, Any]]) -> set[tuple[str, int | None, int]]:
    """(kind, bucket, rank) of every example the scores' judges graded."""
    return {
        (d.get("kind"), d.get("bucket"), d.get("rank"))
        for score in scores
        for d in score["details"]
        if isinstance(d, dict)
    }


def _score_record(row: tuple) -> dict[str, Any]:
    fid, scorer, judge, explainer, version, scorer_version, status = row[:7]
    score, chance, text, metrics, details, created = row[7:]
    return {
        "scorer": scorer,
        "metric": SCORER_METRICS.get(scorer, "score"),
        "judge": judge,
        "explainer": explainer,
        "prompt_version": version,
        "scorer_version": scorer_version,
        "status": status,
        "score": round_sig(score, 4),
        "chance": round_sig(chance, 4),
        "explanation": text,
        "metrics": _rounded(_json_column(metrics, fid, "metrics", dict)),
        "details": _rounded(_json_column(details, fid, "details", list)),
        "created_at": created,
    }


def _json_column(text: str, fid: int, column: str, kind: type) -> Any:
    """A scores row's JSON column, checked to be the documented kind of value."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise FeatureStoreError(f"scores.{column} of feature {fid} is not JSON: {err}") from err
    if not isinstance(value, kind):
        raise FeatureStoreError(f"scores.{column} of feature {fid} is not a JSON {kind.__name__}")
    return value


def _rounded(value: Any) -> Any:
    """Every float inside `value` to 4 significant digits (what the browser shows); NaN and
    infinities (json.dumps writes them, a browser cannot parse them) become None."""
    if isinstance(value, float):
        return round_sig(value, 4) if math.isfinite(value) else None
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value
