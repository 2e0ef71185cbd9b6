"""The feature store: one SQLite file per (SAE, activation store) pair.

This module is the contract between `analyze` (the writer) and `serve` / `steer` / the
exporters (readers). Readable from any SQLite client; every JSON column holds plain lists or
objects. Activations are in the SAE's reporting convention (`meta.activation_convention`, e.g.
f*||W_dec_i|| for the relu recipe), the units steering multiples refer to.

Tables
------
meta(key TEXT PRIMARY KEY, value TEXT)       JSON-encoded values:
    schema_version   int, SCHEMA_VERSION
    complete         bool, the pass finished (readers refuse or warn on an incomplete store)
    sae              {"path", "sha256" (of weights.safetensors), "arch", "n_features", "d_in",
                      "site", "model", "activation_convention"}
    acts             {"path", "manifest_sha256", "site", "n_tokens", "split"}
    model            {"name", "revision"}: the model whose tokenizer decodes the token ids
    params           the AnalyzeConfig that produced the store (top_n, n_quantiles, window, ...)
    tokens_seen      int, tokens consumed so far (resume point)
    hist_edges       [n_bins + 1] log10-spaced activation bin edges shared by all features
                     (set from the first batch; the first and last bins also count values
                     below and above them)
    density_hist     {"edges": [...log10 density...], "counts": [...], "dead": int} over all
                     features (dead: features that never fired, outside the log10 bins)
    neighbour_search 'exact', 'approximate' (k-means lists, for dictionaries past
                     params.exact_neighbours; analyze/neighbours.py) or 'none' (no neighbours)
    seconds          {"neighbours", "pass", "examples", "logits", "map", "windows_and_write"}:
                     wall time per stage
    created_at, monoscope_version
features(id INTEGER PRIMARY KEY,             one row per feature, 0..n_features-1
    n_fired INTEGER, density REAL,           tokens with activation > 0, and that / tokens_seen
    max_act REAL, mean_act REAL,             max, and mean over firing tokens
    hist TEXT,                               JSON [n_bins] counts of non-zero activations per
                                             meta.hist_edges bin
    logit_top TEXT, logit_bottom TEXT,       JSON [[token_id, token_text, effect], ...] direct
                                             logit effects (final norm approx + unembedding)
    map_x REAL, map_y REAL,                  2-D map (UMAP of decoder directions), NULL if none
    explanation TEXT, score REAL)            filled by the interpret stage, NULL until then
examples(feature INTEGER, kind TEXT,         kind: 'top' | 'quantile' | 'random' (random contexts
                                             where the feature does not fire)
    rank INTEGER,                            order within (feature, kind, bucket), 0 = first
    bucket INTEGER,                          quantile interval index (0 = lowest), NULL otherwise
    activation REAL,                         the activation at the example's centre token
    context INTEGER, position INTEGER,       where in the store (context index, token position)
    tokens TEXT,                             JSON [window] token ids around the centre token
    acts TEXT,                               JSON [window] the feature's activation on each
    centre INTEGER,                          index of the centre token inside `tokens`
    PRIMARY KEY (feature, kind, bucket, rank))
neighbours(feature INTEGER, rank INTEGER,    top decoder-cosine neighbours, rank 0 = closest
    neighbour INTEGER, cosine REAL,
    cooccurrence REAL,                       P(neighbour fires | feature fires), NULL if unknown
    PRIMARY KEY (feature, rank))
vocab(id INTEGER PRIMARY KEY, text TEXT)     the tokenizer's decoded text of each token id

Written by the interpret stage (schema version 2; a version-1 store gains them, empty, when a
writer opens it: `migrate`):

explanations(feature INTEGER,                one row per feature x explainer x prompt version
    explainer TEXT,                          'backend:model', e.g. 'local:smollm2-135m'
    prompt_version TEXT,                     e.g. 'explain-v1' (the prompt file's name)
    status TEXT,                             'ok' | 'unparsable' (the raw answer is kept)
    explanation TEXT,                        the one-phrase explanation, NULL unless ok
    raw TEXT,                                the answer as the LLM gave it
    examples TEXT,                           JSON [[kind, bucket, rank], ...] the examples shown
    cache_keys TEXT,                         JSON [key, ...] of the calls in the call cache
    created_at TEXT,
    PRIMARY KEY (feature, explainer, prompt_version))
scores(feature INTEGER,                      one row per feature x scorer x judge x explanation
    scorer TEXT,                             'detection' | 'fuzzing' | 'simulation' | 'embedding'
    judge TEXT,                              'backend:model' of the judge (embedding: the
                                             embedding model)
    explainer TEXT, prompt_version TEXT,     the explanation scored (its explainer and prompt
                                             version), and the scorer's prompt version
    scorer_version TEXT,
    status TEXT,                             'ok' | 'unparsable' (no usable answer at all) |
                                             'undefined' (answers, but no headline: e.g. no
                                             non-activating window)
    score REAL, chance REAL,                 the headline score (detection, fuzzing: balanced
                                             accuracy; simulation: Pearson r; embedding: AUROC)
                                             and what a judge without information scores
    explanation TEXT,                        the explanation text that was scored
    metrics TEXT,                            JSON {accuracy, balanced_accuracy, precision,
                                             recall, f1, auc, per_quantile, n, n_unparsable}
                                             (the keys that apply to the scorer)
    details TEXT,                            JSON [{kind, bucket, rank, truth, answer, ...}]: the
                                             held-out examples with the judge's answers
    cache_keys TEXT, created_at TEXT,
    PRIMARY KEY (feature, scorer, judge, explainer, prompt_version, scorer_version))
features.explanation and features.score hold the latest ok explanation and its headline score
(detection when there is one, else fuzzing, simulation, embedding).
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)
"""Versions readers open: a version-1 store is read as one without explanations."""

DDL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS features (
    id INTEGER PRIMARY KEY, n_fired INTEGER NOT NULL, density REAL NOT NULL,
    max_act REAL NOT NULL, mean_act REAL NOT NULL, hist TEXT NOT NULL,
    logit_top TEXT, logit_bottom TEXT, map_x REAL, map_y REAL,
    explanation TEXT, score REAL);
CREATE TABLE IF NOT EXISTS examples (
    feature INTEGER NOT NULL, kind TEXT NOT NULL, rank INTEGER NOT NULL, bucket INTEGER,
    activation REAL NOT NULL, context INTEGER NOT NULL, position INTEGER NOT NULL,
    tokens TEXT NOT NULL, acts TEXT NOT NULL, centre INTEGER NOT NULL,
    PRIMARY KEY (feature, kind, bucket, rank));
CREATE TABLE IF NOT EXISTS neighbours (
    feature INTEGER NOT NULL, rank INTEGER NOT NULL, neighbour INTEGER NOT NULL,
    cosine REAL NOT NULL, cooccurrence REAL, PRIMARY KEY (feature, rank));
CREATE TABLE IF NOT EXISTS vocab (id INTEGER PRIMARY KEY, text TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS features_density ON features (density);
CREATE INDEX IF NOT EXISTS features_max_act ON features (max_act);
"""

DDL_INTERPRET = """
CREATE TABLE IF NOT EXISTS explanations (
    feature INTEGER NOT NULL, explainer TEXT NOT NULL, prompt_version TEXT NOT NULL,
    status TEXT NOT NULL, explanation TEXT, raw TEXT NOT NULL, examples TEXT NOT NULL,
    cache_keys TEXT NOT NULL, created_at TEXT NOT NULL,
    PRIMARY KEY (feature, explainer, prompt_version));
CREATE TABLE IF NOT EXISTS scores (
    feature INTEGER NOT NULL, scorer TEXT NOT NULL, judge TEXT NOT NULL,
    explainer TEXT NOT NULL, prompt_version TEXT NOT NULL, scorer_version TEXT NOT NULL,
    status TEXT NOT NULL, score REAL, chance REAL, explanation TEXT NOT NULL,
    metrics TEXT NOT NULL, details TEXT NOT NULL, cache_keys TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (feature, scorer, judge, explainer, prompt_version, scorer_version));
CREATE INDEX IF NOT EXISTS features_score ON features (score);
"""


class FeatureStoreError(ValueError):
    """A feature store that is missing, of another schema version, or incomplete."""


class UnfinishedWriteError(FeatureStoreError):
    """A store whose last write is unfinished and cannot be undone now: its writer is still at
    work, or the file or its folder is read-only. The store itself is intact (no --overwrite)."""


def create(path: str | Path) -> sqlite3.Connection:
    """Open (creating if needed) a feature store for writing, with the schema in place."""
    conn = sqlite3.connect(path)
    conn.executescript(DDL + DDL_INTERPRET)
    conn.execute(
        "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (json.dumps(SCHEMA_VERSION),)
    )
    conn.commit()
    migrate(conn)
    return conn


def migrate(conn: sqlite3.Connection) -> None:
    """Bring a writable store of an older version to SCHEMA_VERSION, in one transaction.

    1 -> 2 adds the interpret stage's tables (empty); nothing already there changes.
    """
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    found = None if row is None else json.loads(row[0])
    if found == SCHEMA_VERSION and all(has_table(conn, t) for t in ("explanations", "scores")):
        return
    if found not in READABLE_VERSIONS:
        raise FeatureStoreError(
            f"feature-store schema version {found} cannot be migrated to {SCHEMA_VERSION}"
        )
    with conn:
        for statement in DDL_INTERPRET.split(";"):
            if statement.strip():
                conn.execute(statement)
        write_meta(conn, schema_version=SCHEMA_VERSION)


def journal_path(db: Path) -> Path:
    """The rollback journal SQLite keeps beside `db` while a transaction writes it."""
    return db.with_name(db.name + "-journal")


def roll_back_unfinished(path: Path) -> None:
    """Undo the transaction of a writer killed mid-write, should one have left its journal.

    A read-only connection cannot roll a hot journal back (it refuses the whole file), so one
    read-write connection reads the store first: SQLite rolls the journal back on that read,
    returning the store to its last commit. A live writer's journal is left alone: SQLite only
    rolls back a journal whose writer no longer holds the store's lock.
    """
    journal = journal_path(path)
    if not journal.exists():
        return
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True)
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            conn.close()
    except sqlite3.DatabaseError as err:
        if "locked" in str(err):
            raise UnfinishedWriteError(
                f"{path} is locked by another process writing it; try again when it has finished"
            ) from None
        if not all(os.access(p, os.W_OK) for p in (path, journal, path.parent)):
            raise UnfinishedWriteError(
                f"{path} holds the unfinished write of a killed process, which cannot be rolled "
                f"back here because the file or its folder is read-only: open it once where it "
                f"can be written (or copy it with {journal.name} to a writable folder) to get "
                "the store as of its last commit"
            ) from None
        raise FeatureStoreError(
            f"{path}: the unfinished write in {journal} cannot be rolled back: {err}"
        ) from err


def open_readonly(path: str | Path) -> sqlite3.Connection:
    """Open an existing feature store read-only, after rolling back the unfinished write of a
    killed writer; FeatureStoreError if it is not a store."""
    path = Path(path)
    if not path.is_file():
        raise FeatureStoreError(f"{path}: no such feature store (run `monoscope analyze` first)")
    roll_back_unfinished(path)
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    except sqlite3.DatabaseError as err:
        conn.close()
        raise FeatureStoreError(f"{path} is not a monoscope feature store: {err}") from err
    if row is None or json.loads(row[0]) not in READABLE_VERSIONS:
        conn.close()
        found = None if row is None else json.loads(row[0])
        raise FeatureStoreError(
            f"{path} has feature-store schema version {found}, this monoscope reads "
            f"versions {', '.join(map(str, READABLE_VERSIONS))}"
        )
    return conn


def has_table(conn: sqlite3.Connection, name: str) -> bool:
    """Whether the store has table `name` (a version-1 store has no interpret tables)."""
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))
    return row.fetchone() is not None


def database_file(conn: sqlite3.Connection) -> str:
    """The file behind `conn` (its main database), for messages."""
    return next((row[2] for row in conn.execute("PRAGMA database_list") if row[1] == "main"), "")


def read_meta(conn: sqlite3.Connection) -> dict[str, Any]:
    """Every meta entry, JSON-decoded; FeatureStoreError naming the file and key of one that
    does not decode (a damaged store)."""
    meta: dict[str, Any] = {}
    for key, value in conn.execute("SELECT key, value FROM meta"):
        try:
            meta[key] = json.loads(value)
        except (json.JSONDecodeError, TypeError) as err:
            why = f"{err.msg} at char {err.pos}" if isinstance(err, json.JSONDecodeError) else err
            raise FeatureStoreError(
                f"{database_file(conn)}: meta value {key!r} is not valid JSON ({why}); the store "
                "is damaged: rerun `monoscope analyze` with --overwrite"
            ) from err
    return meta


def write_meta(conn: sqlite3.Connection, **entries: Any) -> None:
    """Set meta entries (JSON-encoded); the caller commits."""
    conn.executemany(
        "INSERT OR REPLACE INTO meta VALUES (?, ?)",
        [(k, json.dumps(v)) for k, v in entries.items()],
    )
