"""Writing the interpret stage's rows into the feature store (tables in analyze/schema.py).

Each feature's rows go in one transaction as soon as its calls are done, so a killed run keeps
every finished feature and its rerun skips them (the call cache covers the rest).
"""

from __future__ import annotations

import datetime
import json
import sqlite3
from typing import Any

HEADLINE_ORDER = ("detection", "fuzzing", "simulation", "embedding")
"""Which scorer's score `features.score` shows: the first of these a feature has."""


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def write_explanation(conn: sqlite3.Connection, feature: int, explainer: str, result) -> None:
    """Store an explainer's result (ok or unparsable) and refresh the feature's columns."""
    with conn:
        conn.execute(
            "INSERT OR REPLACE INTO explanations VALUES (?,?,?,?,?,?,?,?,?)",
            (
                feature,
                explainer,
                result.prompt_version,
                result.status,
                result.explanation,
                result.raw,
                json.dumps(result.examples),
                json.dumps(result.cache_keys),
                now(),
            ),
        )
        refresh_feature(conn, feature)


def write_score(
    conn: sqlite3.Connection,
    feature: int,
    judge: str,
    explanation: dict[str, Any],
    result,
) -> None:
    """Store one scorer's result for the explanation {explainer, prompt_version, text}."""
    with conn:
        conn.execute(
            "INSERT OR REPLACE INTO scores VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                feature,
                result.scorer,
                judge,
                explanation["explainer"],
                explanation["prompt_version"],
                result.version,
                result.status,
                result.score,
                result.chance,
                explanation["text"],
                json.dumps(result.metrics),
                json.dumps(result.details),
                json.dumps(result.cache_keys),
                now(),
            ),
        )
        refresh_feature(conn, feature)


def latest_explanations(
    conn: sqlite3.Connection, ids: list[int], explainer: str = ""
) -> dict[int, dict[str, Any]]:
    """The newest ok explanation of each feature (of `explainer` if given):
    {feature: {explainer, prompt_version, text}}."""
    marks = ",".join("?" * len(ids))
    query = (
        "SELECT feature, explainer, prompt_version, explanation FROM explanations "
        f"WHERE status = 'ok' AND feature IN ({marks})"
    )
    args: list[Any] = list(ids)
    if explainer:
        query += " AND explainer = ?"
        args.append(explainer)
    out: dict[int, dict[str, Any]] = {}
    for fid, who, version, text in conn.execute(query + " ORDER BY created_at, rowid", args):
        out[fid] = {"explainer": who, "prompt_version": version, "text": text}
    return out


def explained_ids(conn: sqlite3.Connection, explainer: str, prompt_version: str) -> set[int]:
    """Features with an ok explanation from this explainer and prompt version."""
    rows = conn.execute(
        "SELECT feature FROM explanations WHERE status = 'ok' AND explainer = ? "
        "AND prompt_version = ?",
        (explainer, prompt_version),
    )
    return {fid for (fid,) in rows}


def refresh_feature(conn: sqlite3.Connection, feature: int) -> None:
    """features.explanation: the newest ok explanation; features.score: that explanation's
    headline score (HEADLINE_ORDER), newest judge first."""
    row = latest_explanations(conn, [feature]).get(feature)
    score = None
    if row is not None:
        for scorer in HEADLINE_ORDER:
            found = conn.execute(
                "SELECT score FROM scores WHERE feature = ? AND scorer = ? AND explainer = ? "
                "AND prompt_version = ? AND status = 'ok' AND score IS NOT NULL "
                "ORDER BY created_at DESC, rowid DESC LIMIT 1",
                (feature, scorer, row["explainer"], row["prompt_version"]),
            ).fetchone()
            if found is not None:
                score = found[0]
                break
    conn.execute(
        "UPDATE features SET explanation = ?, score = ? WHERE id = ?",
        (None if row is None else row["text"], score, feature),
    )
