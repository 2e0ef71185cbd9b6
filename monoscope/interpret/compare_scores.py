"""Features vs neurons, the interpretability half (Templeton et al. 2024, METHODS.md §5.2, §5.3):
the scores of up to N random features beside those of N random neurons, read from the two
feature stores' `scores` tables and from specificity reports, with a rank test.

Headline score per scorer (schema.py): detection and fuzzing balanced accuracy, simulation r,
embedding AUROC. A feature scored several times by one scorer counts once, by its latest ok
row. Specificity: a feature's mean rubric grade (0-3) over its graded firing windows
(specificity_report.feature_means).
"""

from __future__ import annotations

import math
import random
import sqlite3
from collections import Counter
from pathlib import Path
from statistics import mean, median

from monoscope.analyze.schema import has_table
from monoscope.interpret.metrics import auroc
from monoscope.interpret.specificity_report import REPORT_FILE, feature_means


def latest_scores(conn: sqlite3.Connection) -> dict[str, dict]:
    """{scorer: {"scores": {feature: score}, "chance": [...], "judges", "explainers"}} from a
    store's latest ok score per (feature, scorer); {} when the store has no scores table."""
    if not has_table(conn, "scores"):
        return {}
    out: dict[str, dict] = {}
    rows = conn.execute(
        "SELECT feature, scorer, judge, explainer, score, chance FROM scores "
        "WHERE status = 'ok' AND score IS NOT NULL ORDER BY created_at, rowid"
    )
    for feature, scorer, judge, explainer, score, chance in rows:
        entry = out.setdefault(
            scorer, {"scores": {}, "chance": {}, "judges": set(), "explainers": set()}
        )
        entry["scores"][feature] = score  # later rows replace earlier ones
        entry["chance"][feature] = chance
        entry["judges"].add(judge)
        entry["explainers"].add(explainer)
    return out


def specificity_scores(folder: str | Path) -> dict[int, float]:
    """{feature: mean grade over its graded firing windows} of the `monoscope specificity`
    report in `folder`."""
    path = Path(folder) / REPORT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder} holds no specificity report ({REPORT_FILE})")
    try:
        return feature_means(path)
    except (KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a `monoscope specificity` report: {err!r}") from err


def sample(scores: dict[int, float], n: int, seed: int) -> dict[int, float]:
    """At most n of the scored features, a seeded random choice."""
    ids = sorted(scores)
    if len(ids) > n:
        ids = sorted(random.Random(seed).sample(ids, n))
    return {i: scores[i] for i in ids}


def rank_test(a: list[float], b: list[float]) -> tuple[float, float]:
    """(P(a random a beats a random b) + half the ties, two-sided p) of the Mann-Whitney U
    test, normal approximation with the tie correction; (nan, nan) if either side is empty."""
    n_a, n_b = len(a), len(b)
    if not n_a or not n_b:
        return math.nan, math.nan
    # U / (n_a n_b) is the AUROC of a against b, ties counting one half.
    auc = auroc([True] * n_a + [False] * n_b, a + b)
    assert auc is not None  # both sides hold values
    u = auc * n_a * n_b
    ties = sum(c**3 - c for c in Counter(a + b).values())
    n = n_a + n_b
    variance = n_a * n_b / 12 * ((n + 1) - ties / (n * (n - 1)))
    z = (u - n_a * n_b / 2) / math.sqrt(variance) if variance > 0 else 0.0
    return u / (n_a * n_b), math.erfc(abs(z) / math.sqrt(2))


def side(values: list[float]) -> dict:
    return {
        "n": len(values),
        "mean": mean(values) if values else None,
        "median": median(values) if values else None,
        "values": values,
    }


def compare(features: dict[int, float], neurons: dict[int, float], n: int, seed: int) -> dict:
    """Both sides sampled to at most n, their summaries, and the rank test."""
    a = list(sample(features, n, seed).values())
    b = list(sample(neurons, n, seed).values())
    auc, p = rank_test(a, b)
    return {
        "features": side(a),
        "neurons": side(b),
        "p_features_beat_neurons": None if math.isnan(auc) else auc,
        "p_value": None if math.isnan(p) else p,
    }
