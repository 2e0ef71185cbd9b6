"""The interpret stage's rows as the browser shows them: each feature's explanations, its scores
with their chance levels, and the judged held-out examples (tables in analyze/schema.py; a
version-1 store has none, and every feature reads as unexplained).
"""

from __future__ import annotations

import math
import sqlite3
from typing import Any

from monoscope.analyze.schema import has_table
from monoscope.interpret.store import HEADLINE_ORDER
from monoscope.serve.catalog import BrokenField, database_file, field_error, json_column, round_sig

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
    """{feature: {"explanations": [...], "scores": [...], "errors": [note]}} for the features
    start..stop-1 that have rows; shapes in records.py. Explanations newest first; scores
    grouped by the explanation they score, then in HEADLINE_ORDER."""
    out: dict[int, dict[str, list]] = {}

    def entry(fid: int) -> dict[str, list]:
        return out.setdefault(fid, {"explanations": [], "scores": [], "errors": []})

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
    db = database_file(conn)
    for row in rows:
        found = entry(row[0])
        found["scores"].append(_score_record(row, f"{db}: scores.%s of feature {row[0]}", found))
    return out


def judged_keys(scores: list[dict[str, Any]]) -> set[tuple[str | None, int | None, int | None]]:
    """(kind, bucket, rank) of every example the scores' judges graded (None: a key a judged
    record lacks)."""
    return {
        (d.get("kind"), d.get("bucket"), d.get("rank"))
        for score in scores
        for d in score["details"] or ()
        if isinstance(d, dict)
    }


def _score_record(row: tuple, place: str, found: dict[str, list]) -> dict[str, Any]:
    """One score; a metrics or details column that does not parse is None, with a note in
    found["errors"] naming it (`place`: "FILE: scores.%s of feature N")."""
    _, scorer, judge, explainer, version, scorer_version, status = row[:7]
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
        "metrics": _json_column(metrics, dict, place % "metrics", scorer, found),
        "details": _json_column(details, list, place % "details", scorer, found),
        "created_at": created,
    }


def _json_column(text: str, kind: type, place: str, scorer: str, found: dict[str, list]) -> Any:
    """A scores row's JSON column, rounded, checked to be the documented kind of value; None
    and a note in found["errors"] if not."""
    try:
        return _rounded(json_column(text, kind, f"{place} ({scorer} score)"))
    except BrokenField as err:
        found["errors"].append(field_error(err))
        return None


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
