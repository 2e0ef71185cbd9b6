"""The browser's data shapes, built from the feature store's rows.

The live API returns these dicts as JSON and the static site writes the same dicts into its
data files, so the front end reads one shape either way:

meta     the store's meta entries plus n_features, label, complete, has_explanations, has_map
feature  {id, n_fired, density, max_act, mean_act, hist, logit_top, logit_bottom, map,
          explanation, score, top_tokens,
          examples: {top: [example], quantile: [example]},
          neighbours: [{id, cosine, cooccurrence, density, explanation, top_tokens}]}
example  {activation, bucket, tokens: [text], acts: [float], centre, context, position}
map      {ids, x, y, density}: the features with map coordinates, column by column
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from monoscope.serve.catalog import Catalog, round_sig

EXAMPLE_KINDS = ("top", "quantile")
"""Kinds the browser shows; 'random' (non-firing) contexts are for the scorers."""


def size_label(n_features: int) -> str:
    """Dictionary size as the paper names its runs (1M, 34M): 9216 -> '9.2k', 16384 -> '16k'."""
    for unit, scale in (("M", 10**6), ("k", 10**3)):
        if n_features >= scale:
            value = n_features / scale
            text = f"{value:.1f}" if value < 10 else f"{value:.0f}"
            return text.removesuffix(".0") + unit
    return str(n_features)


def meta_record(meta: dict[str, Any], catalog: Catalog) -> dict[str, Any]:
    return {
        **meta,
        "n_features": catalog.n_features,
        "label": size_label(catalog.n_features),
        "complete": bool(meta.get("complete", False)),
        "has_explanations": catalog.has_explanations,
        "has_map": catalog.has_map,
    }


def feature_records(
    conn: sqlite3.Connection, catalog: Catalog, vocab: list[str], start: int, stop: int
) -> list[dict[str, Any]]:
    """Records of features start..stop-1, from three range queries."""
    records: dict[int, dict[str, Any]] = {}
    for row in conn.execute(
        "SELECT id, n_fired, density, max_act, mean_act, hist, logit_top, logit_bottom, "
        "map_x, map_y FROM features WHERE id >= ? AND id < ? ORDER BY id",
        (start, stop),
    ):
        fid, n_fired, _, _, _, hist, top, bottom, x, y = row
        records[fid] = {
            **catalog.summary(fid),
            "n_fired": n_fired,
            "hist": json.loads(hist),
            "logit_top": _logits(top),
            "logit_bottom": _logits(bottom),
            "map": None if x is None or y is None else [round_sig(x, 5), round_sig(y, 5)],
            "examples": {kind: [] for kind in EXAMPLE_KINDS},
            "neighbours": [],
        }
    kinds = ",".join(f"'{k}'" for k in EXAMPLE_KINDS)
    for fid, kind, bucket, activation, context, position, tokens, acts, centre in conn.execute(
        "SELECT feature, kind, bucket, activation, context, position, tokens, acts, centre "
        f"FROM examples WHERE feature >= ? AND feature < ? AND kind IN ({kinds}) "
        "ORDER BY feature, kind, bucket, rank",
        (start, stop),
    ):
        if fid in records:
            records[fid]["examples"][kind].append(
                {
                    "activation": round_sig(activation, 4),
                    "bucket": bucket,
                    "tokens": [_text(vocab, t) for t in json.loads(tokens)],
                    "acts": [round_sig(a, 4) for a in json.loads(acts)],
                    "centre": centre,
                    "context": context,
                    "position": position,
                }
            )
    for fid, neighbour, cosine, cooccurrence in conn.execute(
        "SELECT feature, neighbour, cosine, cooccurrence FROM neighbours "
        "WHERE feature >= ? AND feature < ? ORDER BY feature, rank",
        (start, stop),
    ):
        if fid in records and 0 <= neighbour < catalog.n_features:
            brief = catalog.summary(neighbour)
            records[fid]["neighbours"].append(
                {
                    "id": neighbour,
                    "cosine": round_sig(cosine, 4),
                    "cooccurrence": round_sig(cooccurrence, 4),
                    "density": brief["density"],
                    "explanation": brief["explanation"],
                    "top_tokens": brief["top_tokens"],
                }
            )
    return [records[fid] for fid in sorted(records)]


def map_record(conn: sqlite3.Connection) -> dict[str, list]:
    ids, xs, ys, density = [], [], [], []
    for fid, x, y, d in conn.execute(
        "SELECT id, map_x, map_y, density FROM features "
        "WHERE map_x IS NOT NULL AND map_y IS NOT NULL ORDER BY id"
    ):
        ids.append(fid)
        xs.append(round_sig(x, 5))
        ys.append(round_sig(y, 5))
        density.append(round_sig(d, 4))
    return {"ids": ids, "x": xs, "y": ys, "density": density}


def _text(vocab: list[str], token_id: int) -> str:
    return vocab[token_id] if 0 <= token_id < len(vocab) else f"<{token_id}>"


def _logits(column: str | None) -> list[list]:
    """[[token_id, text, effect]] with effects rounded for display."""
    if column is None:
        return []
    return [[tid, text, round_sig(effect, 4)] for tid, text, effect in json.loads(column)]
