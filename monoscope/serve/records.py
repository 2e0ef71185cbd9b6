"""The browser's data shapes, built from the feature store's rows.

The live API returns these dicts as JSON and the static site writes the same dicts into its
data files, so the front end reads one shape either way:

meta     the store's meta entries plus n_features, label, complete, has_explanations, has_map,
         has_interpretation (the store has the interpret stage's tables: schema version 2)
summary  {id, density, max_act, mean_act, explanation, score, top_tokens}: a list row
         (explanation: the latest ok one; score: its headline score, null when unscored)
list     {total, offset, limit, items: [summary]}; the meaning search's items add
         `similarity` (cosine of the query's and the explanation's embeddings) and its answer
         adds `model` (the embedding model)
feature  {id, n_fired, density, max_act, mean_act, hist, logit_top, logit_bottom, map,
          explanation, score, top_tokens,
          examples: {top: [example], quantile: [example], random: [example]},
          neighbours: [{id, cosine, cooccurrence, density, explanation, top_tokens}],
          explanations: [explanation], scores: [score], errors: [text]}
         errors: one line per damaged field of the store (a JSON column that does not
         parse), naming file, table, column and feature; the field is then null (hist,
         logit_top, logit_bottom; a score's metrics or details) or the example left out
         examples.random holds only the non-firing windows some score's judge graded; the
         static site's records add `similar` ([similar], or null when the export had no
         embedding model), which the live server answers at /api/features/{id}/similar
example  {kind, bucket, rank, activation, tokens: [text], acts: [float], centre, context,
          position}
explanation  {explainer, prompt_version, status ('ok' | 'unparsable'), explanation (null
          unless ok), raw (the LLM's answer), created_at}; newest first
score    {scorer, metric (what `score` is: 'balanced accuracy' for detection and fuzzing,
          'Pearson r' for simulation, 'AUROC' for embedding), judge, explainer,
          prompt_version, scorer_version, status, score, chance (the score of a judge
          without information), explanation (the text scored), metrics: {...},
          details: [judged], created_at}
judged   {kind, bucket, rank, truth, answer, ...}: one held-out example and the judge's
          answer, as the scorer wrote it; (kind, bucket, rank) names the window in
          `examples`. detection, fuzzing: truth and answer 0/1 (answer null: unparsable);
          embedding: truth 0/1, answer the cosine; simulation: truth and answer [window]
          true and predicted activations per token; fuzzing adds `marked` ([token index]
          the tokens the judge saw marked)
similar  {id, similarity, explanation, score}: the features whose explanations are nearest
map      {ids, x, y, density, total}: the features with map coordinates, column by column;
         total of them, of which at most MAP_POINTS are sent (an even sample by id)

Floats are rounded to 4-6 significant digits; NaN in a scorer's JSON becomes null.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from itertools import islice
from typing import Any

from monoscope.serve.catalog import (
    BrokenField,
    Catalog,
    database_file,
    field_error,
    json_column,
    round_sig,
)
from monoscope.serve.interpretation import interpretation_records, judged_keys

MAP_POINTS = 1 << 15
"""Most points the map sends: past this a sample (the browser draws each on a canvas)."""
EXAMPLE_KINDS = ("top", "quantile")
"""Kinds the browser shows of every feature; of the 'random' (non-firing) contexts it shows the
ones a scorer's judge graded."""


def size_label(n_features: int) -> str:
    """Dictionary size as the paper names its runs (1M, 34M): 9216 -> '9.2k', 16384 -> '16k'."""
    for unit, scale in (("M", 10**6), ("k", 10**3)):
        if n_features >= scale:
            value = n_features / scale
            text = f"{value:.1f}" if value < 10 else f"{value:.0f}"
            return text.removesuffix(".0") + unit
    return str(n_features)


def meta_record(meta: dict[str, Any], catalog: Catalog, interpreted: bool) -> dict[str, Any]:
    return {
        **meta,
        "n_features": catalog.n_features,
        "label": size_label(catalog.n_features),
        "complete": bool(meta.get("complete", False)),
        "has_explanations": catalog.has_explanations,
        "has_map": catalog.has_map,
        "has_interpretation": interpreted,
    }


def feature_records(
    conn: sqlite3.Connection,
    catalog: Catalog,
    vocab: list[str],
    start: int,
    stop: int,
    interpreted: bool = True,
) -> list[dict[str, Any]]:
    """Records of features start..stop-1, from a few range queries; `interpreted` False for a
    store without the interpret stage's tables (schema version 1)."""
    records: dict[int, dict[str, Any]] = {}
    db = database_file(conn)
    for row in conn.execute(
        "SELECT id, n_fired, density, max_act, mean_act, hist, logit_top, logit_bottom, "
        "map_x, map_y FROM features WHERE id >= ? AND id < ? ORDER BY id",
        (start, stop),
    ):
        fid, n_fired, _, _, _, hist, top, bottom, x, y = row
        errors: list[str] = []
        place = f"{db}: features.%s of feature {fid}"
        records[fid] = {
            **catalog.summary(fid),
            "n_fired": n_fired,
            "hist": _field(errors, json_column, hist, list, place % "hist"),
            "logit_top": _field(errors, _logits, top, place % "logit_top"),
            "logit_bottom": _field(errors, _logits, bottom, place % "logit_bottom"),
            "map": None if x is None or y is None else [round_sig(x, 5), round_sig(y, 5)],
            "examples": {kind: [] for kind in (*EXAMPLE_KINDS, "random")},
            "neighbours": [],
            "explanations": [],
            "scores": [],
            "errors": errors,
        }
    kinds = ",".join(f"'{k}'" for k in EXAMPLE_KINDS)
    for fid, example in _examples(conn, vocab, start, stop, f"kind IN ({kinds})"):
        if fid not in records:
            continue
        if isinstance(example, str):
            records[fid]["errors"].append(example)
        else:
            records[fid]["examples"][example["kind"]].append(example)
    _add_neighbours(conn, catalog, records, start, stop)
    if interpreted:
        _add_interpretation(conn, vocab, records, start, stop)
    return [records[fid] for fid in sorted(records)]


def _field(errors: list[str], parse: Callable[..., Any], *args: Any) -> Any:
    """parse(*args), or None with the BrokenField's note added to `errors`."""
    try:
        return parse(*args)
    except BrokenField as err:
        errors.append(field_error(err))
        return None


def _examples(
    conn: sqlite3.Connection, vocab: list[str], start: int, stop: int, where: str
) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """(feature, example record) of the example rows of features start..stop-1 matching
    `where` (SQL over the examples table's columns); (feature, note) for a damaged row."""
    db = database_file(conn)
    for row in conn.execute(
        "SELECT feature, kind, bucket, rank, activation, context, position, tokens, acts, "
        f"centre FROM examples WHERE feature >= ? AND feature < ? AND {where} "
        "ORDER BY feature, kind, bucket, rank",
        (start, stop),
    ):
        fid, kind, bucket, rank, activation, context, position, tokens, acts, centre = row
        place = f"{db}: examples.%s of feature {fid} ({kind} example, bucket {bucket}, rank {rank})"
        try:
            texts = [_text(vocab, t) for t in json_column(tokens, list, place % "tokens")]
            values = [round_sig(a, 4) for a in json_column(acts, list, place % "acts")]
        except BrokenField as err:
            yield fid, field_error(err)
            continue
        except (TypeError, ValueError) as err:
            yield fid, field_error(BrokenField(f"{place % 'tokens'} or acts: {err}"))
            continue
        yield (
            fid,
            {
                "kind": kind,
                "bucket": bucket,
                "rank": rank,
                "activation": round_sig(activation, 4),
                "tokens": texts,
                "acts": values,
                "centre": centre,
                "context": context,
                "position": position,
            },
        )


def _add_neighbours(
    conn: sqlite3.Connection,
    catalog: Catalog,
    records: dict[int, dict[str, Any]],
    start: int,
    stop: int,
) -> None:
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


def _add_interpretation(
    conn: sqlite3.Connection,
    vocab: list[str],
    records: dict[int, dict[str, Any]],
    start: int,
    stop: int,
) -> None:
    """Explanations and scores, and the non-firing windows the scores' judges graded (the
    firing ones are among the top and quantile examples already)."""
    found = interpretation_records(conn, start, stop)
    for fid, rows in found.items():
        if fid in records:
            records[fid]["errors"].extend(rows.pop("errors"))
            records[fid].update(rows)
    judged = {fid: judged_keys(rows["scores"]) for fid, rows in found.items() if rows["scores"]}
    if not judged:
        return
    graded = ",".join(str(int(fid)) for fid in judged)  # only their rows are decoded
    for fid, example in _examples(
        conn, vocab, start, stop, f"kind = 'random' AND feature IN ({graded})"
    ):
        if fid not in records:
            continue
        if isinstance(example, str):
            records[fid]["errors"].append(example)
        elif (example["kind"], example["bucket"], example["rank"]) in judged[fid]:
            records[fid]["examples"]["random"].append(example)


def map_record(conn: sqlite3.Connection, max_points: int | None = None) -> dict[str, Any]:
    """The map's points: every feature with coordinates, or when there are more than
    max_points (default MAP_POINTS) an even sample of them by id (every step-th), so that no
    answer or data file carries a million points."""
    max_points = max_points or MAP_POINTS
    (total,) = conn.execute(
        "SELECT count(*) FROM features WHERE map_x IS NOT NULL AND map_y IS NOT NULL"
    ).fetchone()
    step = max(1, -(-total // max_points))
    ids, xs, ys, density = [], [], [], []
    rows = conn.execute(
        "SELECT id, map_x, map_y, density FROM features "
        "WHERE map_x IS NOT NULL AND map_y IS NOT NULL ORDER BY id"
    )
    for fid, x, y, d in islice(rows, 0, None, step):
        ids.append(fid)
        xs.append(round_sig(x, 5))
        ys.append(round_sig(y, 5))
        density.append(round_sig(d, 4))
    return {"ids": ids, "x": xs, "y": ys, "density": density, "total": total}


def _text(vocab: list[str], token_id: int) -> str:
    return vocab[token_id] if 0 <= token_id < len(vocab) else f"<{token_id}>"


def _logits(column: str | None, place: str) -> list[list]:
    """[[token_id, text, effect]] with effects rounded for display."""
    if column is None:
        return []
    try:
        return [[t, text, round_sig(e, 4)] for t, text, e in json_column(column, list, place)]
    except (TypeError, ValueError) as err:  # BrokenField, or not [id, text, effect] triples
        if isinstance(err, BrokenField):
            raise
        raise BrokenField(f"{place} is not a list of [token id, text, effect]") from err
