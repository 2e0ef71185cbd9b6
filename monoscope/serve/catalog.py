"""The catalogue of a feature store: one short summary per feature, and the search over them.

The live API answers searches with `Catalog.search`; the static site ships the same summaries
and token index, and its JavaScript (`static/assets/js/search.js`) repeats the same rules, so a
search gives the same features in both:

- an empty query lists every feature;
- a number, or `#number`, is that feature id;
- otherwise every whitespace-separated word must match, case-insensitively, either a token on
  which the feature fires in its top examples (the whole token, surrounding spaces ignored) or
  a substring of its explanation.

Results are ordered by `sort` (id, density, max_act or score) in `order`, ties by id; features
without a score come last in either order. Words are looked up in the explanations through an
index of their tokens built with the catalogue (`word_index.WordIndex`).
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from monoscope.analyze.schema import FeatureStoreError, database_file
from monoscope.serve.word_index import WordIndex, sorted_unique

SORTS = ("id", "density", "max_act", "score")
ORDERS = ("asc", "desc")
TOP_TOKENS = 4
"""Distinct max-activating tokens shown beside each feature in lists."""

_ID_QUERY = re.compile(r"#?(\d+)")
WORDS_KEPT = 32
"""Query words whose matches (a bool per feature) are kept: the next page of a search, or the
same search in another order, is then found without looking the word up again."""

log = logging.getLogger(__name__)


class BrokenField(ValueError):
    """A feature-store column whose JSON does not parse or is not the documented shape."""


def json_column(text: str | None, kind: type, place: str) -> Any:
    """The JSON value of one column (`place`: "FILE: table.column of feature N"), checked to
    be a `kind`; BrokenField saying where otherwise."""
    try:
        value = json.loads(text)  # type: ignore[arg-type]
    except (json.JSONDecodeError, TypeError) as err:
        why = f"{err.msg} at char {err.pos}" if isinstance(err, json.JSONDecodeError) else err
        raise BrokenField(f"{place} is not valid JSON ({why})") from err
    if not isinstance(value, kind):
        raise BrokenField(f"{place} is not a JSON {kind.__name__}")
    return value


def field_error(err: Exception) -> str:
    """The note a record carries for a broken field (logged too: the server's console and
    export-site name it)."""
    note = f"{err}; shown as missing"
    log.warning("%s", note)
    return note


def round_sig(x: float | None, digits: int) -> float | None:
    """x to `digits` significant digits (the browser shows no more; JSON stays small)."""
    return None if x is None else float(f"{x:.{digits}g}")


def token_key(text: str) -> str:
    """How a token is matched by search: case-folded, surrounding whitespace dropped."""
    return text.strip().lower()


@dataclass
class Catalog:
    density: np.ndarray
    """[n_features] float64, rounded to 6 significant digits."""
    max_act: np.ndarray
    """[n_features] float64, rounded to 6 significant digits."""
    mean_act: np.ndarray
    """[n_features] float64, rounded to 6 significant digits."""
    explanation: list[str | None]
    score: list[float | None]
    top_tokens: list[list[str]]
    """Per feature: the distinct texts of its top examples' centre tokens, best first."""
    token_index: dict[str, list[int]]
    """token_key(text) -> ascending ids of the features firing on that token in top examples."""
    has_map: bool

    def __post_init__(self) -> None:
        # Indexed once (about 2 s a million): a first search for a common word is then a few
        # milliseconds; a loop over a million explanations would take ~100.
        self._words = WordIndex(self.explanation)
        self._has_explanations = any(self.explanation)
        self._score = np.array([np.nan if s is None else s for s in self.score], dtype=np.float64)
        self._orders: dict[tuple[str, str], np.ndarray] = {}
        self._word_hits: OrderedDict[str, np.ndarray] = OrderedDict()
        self._word_lock = threading.Lock()  # the server answers requests on several threads

    @property
    def n_features(self) -> int:
        return len(self.density)

    @property
    def has_explanations(self) -> bool:
        return self._has_explanations

    @classmethod
    def load(cls, conn: sqlite3.Connection, vocab: list[str]) -> Catalog:
        rows = conn.execute(
            "SELECT id, density, max_act, mean_act, explanation, score, map_x IS NOT NULL "
            "FROM features ORDER BY id"
        ).fetchall()
        if rows and rows[-1][0] != len(rows) - 1:
            raise FeatureStoreError(
                f"features table holds {len(rows)} rows but ids up to {rows[-1][0]}: "
                "ids must run 0..n_features-1"
            )
        n = len(rows)
        columns = list(zip(*rows, strict=True)) if rows else [()] * 7
        top_tokens, token_index = _index_top_examples(conn, vocab, n)
        return cls(
            density=_rounded(columns[1]),
            max_act=_rounded(columns[2]),
            mean_act=_rounded(columns[3]),
            explanation=list(columns[4]),
            score=[round_sig(s, 4) for s in columns[5]],
            top_tokens=top_tokens,
            token_index=token_index,
            has_map=any(columns[6]),
        )

    def summary(self, fid: int) -> dict[str, Any]:
        """What a list row shows about one feature."""
        return {
            "id": fid,
            "density": float(self.density[fid]),
            "max_act": float(self.max_act[fid]),
            "mean_act": float(self.mean_act[fid]),
            "explanation": self.explanation[fid],
            "score": self.score[fid],
            "top_tokens": self.top_tokens[fid],
        }

    def match(self, query: str) -> np.ndarray:
        """Ascending ids of the features matching `query` (rules in the module docstring)."""
        query = query.strip()
        if not query:
            return np.arange(self.n_features)
        as_id = _ID_QUERY.fullmatch(query)
        if as_id:
            fid = int(as_id.group(1))
            return np.array([fid] if fid < self.n_features else [], dtype=np.int64)
        return np.flatnonzero(self._matching(query))

    def _matching(self, query: str) -> np.ndarray:
        """[n_features] bool: the features matching each word of a query that is not an id.
        Masks, not id lists: a common word matches most of a million features."""
        found = np.ones(self.n_features, dtype=bool)
        for word in query.lower().split():
            found &= self._word_matches(word)
        return found

    def _word_matches(self, word: str) -> np.ndarray:
        """[n_features] bool: the features matching one case-folded query word (read only:
        the same array serves later queries with that word)."""
        with self._word_lock:
            if word in self._word_hits:
                self._word_hits.move_to_end(word)
                return self._word_hits[word]
        hits = self._words.containing(word)
        hits[np.asarray(self.token_index.get(word, ()), dtype=np.int64)] = True
        hits.flags.writeable = False
        with self._word_lock:
            self._word_hits[word] = hits
            if len(self._word_hits) > WORDS_KEPT:
                self._word_hits.popitem(last=False)
        return hits

    def _order(self, sort: str, order: str) -> np.ndarray:
        """Ids in the sort's order [n], computed once per sort and order: a page of the whole
        list is then a slice, and a search's matches a mask of it, not a sort."""
        key = (sort, order)
        if key not in self._orders:
            ids = np.arange(self.n_features)
            if sort != "id":
                values = self._score if sort == "score" else getattr(self, sort)
                missing = np.isnan(values)
                values = np.where(missing, 0.0, values)
                ids = np.lexsort((ids, -values if order == "desc" else values, missing))
            elif order == "desc":
                ids = ids[::-1]
            self._orders[key] = ids
        return self._orders[key]

    def search(
        self,
        query: str = "",
        sort: str = "id",
        order: str = "asc",
        offset: int = 0,
        limit: int = 50,
    ) -> dict[str, Any]:
        """One page of matching features: {"total", "offset", "limit", "items": [summary]}."""
        if sort not in SORTS or order not in ORDERS:
            raise ValueError(f"sort must be one of {SORTS} and order one of {ORDERS}")
        ids = self._order(sort, order)
        query = query.strip()
        if _ID_QUERY.fullmatch(query):
            ids = self.match(query)
        elif query:
            ids = ids[self._matching(query)[ids]]  # the matches, in the sort's order
        page = ids[offset : offset + limit]
        return {
            "total": len(ids),
            "offset": offset,
            "limit": limit,
            "items": [self.summary(int(i)) for i in page],
        }


def _rounded(values: tuple) -> np.ndarray:
    return np.array([round_sig(v, 6) for v in values], dtype=np.float64)


def _index_top_examples(
    conn: sqlite3.Connection, vocab: list[str], n: int, chunk: int = 20_000
) -> tuple[list[list[str]], dict[str, list[int]]]:
    """Per feature, its top tokens; over all features, token_key -> ids firing on it.

    The JSON arrays of a chunk of rows are parsed in one json.loads each (their brackets
    stripped and joined), then handled as flat numpy arrays: a few seconds for 16k features
    with 20 examples of 32 tokens, against a minute row by row.
    """
    keys = [token_key(t) for t in vocab]
    key_ids: dict[str, int] = {}
    key_of_token = np.array([key_ids.setdefault(k, len(key_ids)) for k in keys] + [-1])
    centres: dict[int, list[int]] = {}  # of the features with top examples only: few of 1M
    pairs = []  # per chunk, the distinct (key id, feature) pairs as key id * n + feature
    cursor = conn.execute(
        "SELECT feature, tokens, acts, centre FROM examples WHERE kind = 'top' "
        "ORDER BY feature, rank"
    )
    while rows := cursor.fetchmany(chunk):
        rows = [r for r in rows if 0 <= r[0] < n and r[1] != "[]"]
        if not rows:
            continue
        try:
            tokens, acts, lengths = _parse_examples(rows)
        except (ValueError, TypeError):  # a damaged row: find it, leave it out, say so
            rows = [r for r in rows if _readable_example(r, conn)]
            if not rows:
                continue
            tokens, acts, lengths = _parse_examples(rows)
        starts = np.cumsum(lengths) - lengths
        for (fid, _, _, centre), start, length in zip(rows, starts, lengths, strict=True):
            if 0 <= centre < length:
                centres.setdefault(fid, []).append(int(tokens[start + centre]))
        features = np.repeat([r[0] for r in rows], lengths)
        fired = acts > 0
        # Unknown token ids map to key -1 and are dropped.
        token_keys = key_of_token[np.where((tokens >= 0) & (tokens < len(vocab)), tokens, -1)]
        keep = fired & (token_keys >= 0)
        pairs.append(sorted_unique(token_keys[keep] * n + features[keep]))
    top_tokens = _top_tokens(centres, vocab, n)
    index: dict[str, list[int]] = {}
    if pairs:
        both = sorted_unique(np.concatenate(pairs))  # by key id, then feature
        key_col, feature_col = np.divmod(both, n)
        names = list(key_ids)
        bounds = np.flatnonzero(np.diff(key_col)) + 1
        for start, stop in zip(np.r_[0, bounds], np.r_[bounds, len(both)], strict=True):
            name = names[key_col[start]]
            if name:
                index[name] = feature_col[start:stop].tolist()
    return top_tokens, index


def _top_tokens(centres: dict[int, list[int]], vocab: list[str], n: int) -> list[list[str]]:
    """Per feature 0..n-1, the distinct texts of its top examples' centre tokens."""
    top_tokens: list[list[str]] = [[] for _ in range(n)]
    for fid, ids in centres.items():
        top_tokens[fid] = _distinct_texts(ids, vocab)
    return top_tokens


def _parse_examples(rows: list[tuple]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tokens [total] int, acts [total] float, lengths [rows]) of (feature, tokens, acts,
    centre) example rows, each JSON array parsed with the others in one json.loads."""
    tokens = np.array(json.loads("[" + ",".join(r[1][1:-1] for r in rows) + "]"), np.int64)
    acts = np.array(json.loads("[" + ",".join(r[2][1:-1] for r in rows) + "]"), float)
    lengths = np.array([r[1].count(",") + 1 for r in rows])
    if len(tokens) != len(acts) or lengths.sum() != len(tokens):
        raise ValueError("examples table: tokens and acts of a row differ in length")
    return tokens, acts, lengths


def _readable_example(row: tuple, conn: sqlite3.Connection) -> bool:
    """Whether a top example row's tokens and acts are arrays of one length of numbers; a
    warning names the row when not."""
    fid, text_tokens, text_acts, _ = row
    place = f"{database_file(conn)}: examples.%s of feature {fid} (a top example)"
    try:
        json_column(text_tokens, list, place % "tokens")
        json_column(text_acts, list, place % "acts")
        _parse_examples([row])
    except BrokenField as err:
        problem = str(err)
    except (ValueError, TypeError):
        problem = f"{place % 'tokens'} and acts are not number arrays of one length"
    else:
        return True
    log.warning("%s; left out of the search and top tokens", problem)
    return False


def _distinct_texts(token_ids: list[int], vocab: list[str]) -> list[str]:
    """The texts of the first TOP_TOKENS distinct (by token_key) tokens."""
    seen: dict[str, str] = {}
    for t in token_ids:
        text = vocab[t] if 0 <= t < len(vocab) else f"<{t}>"
        seen.setdefault(token_key(text), text)
        if len(seen) == TOP_TOKENS:
            break
    return list(seen.values())
