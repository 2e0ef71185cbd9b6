"""The scorers' metrics as pure functions of plain lists.

A metric that is undefined on its input (a class with no example, a constant series) returns
None rather than a number, so a report never shows a made-up 0 or 0.5 and JSON stays valid.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence


def confusion(truth: Sequence[bool], pred: Sequence[bool]) -> tuple[int, int, int, int]:
    """(true positives, false positives, true negatives, false negatives)."""
    if len(truth) != len(pred):
        raise ValueError(f"{len(truth)} truths but {len(pred)} predictions")
    tp = sum(1 for t, p in zip(truth, pred, strict=True) if t and p)
    fp = sum(1 for t, p in zip(truth, pred, strict=True) if not t and p)
    tn = sum(1 for t, p in zip(truth, pred, strict=True) if not t and not p)
    return tp, fp, tn, len(truth) - tp - fp - tn


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def accuracy(truth: Sequence[bool], pred: Sequence[bool]) -> float | None:
    tp, fp, tn, fn = confusion(truth, pred)
    return _ratio(tp + tn, tp + fp + tn + fn)


def recall(truth: Sequence[bool], pred: Sequence[bool]) -> float | None:
    """True positive rate: of the positives, the share predicted positive."""
    tp, _, _, fn = confusion(truth, pred)
    return _ratio(tp, tp + fn)


def precision(truth: Sequence[bool], pred: Sequence[bool]) -> float | None:
    tp, fp, _, _ = confusion(truth, pred)
    return _ratio(tp, tp + fp)


def f1(truth: Sequence[bool], pred: Sequence[bool]) -> float | None:
    tp, fp, _, fn = confusion(truth, pred)
    return _ratio(2 * tp, 2 * tp + fp + fn)


def balanced_accuracy(truth: Sequence[bool], pred: Sequence[bool]) -> float | None:
    """Mean of the true positive and true negative rates: 0.5 for any judge that ignores the
    input, whatever the class balance (Delphi's headline)."""
    tp, fp, tn, fn = confusion(truth, pred)
    if not (tp + fn and tn + fp):
        return None
    return 0.5 * (tp / (tp + fn) + tn / (tn + fp))


def average_ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, tied values sharing the mean of the ranks they span."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for i in order[start : end + 1]:
            ranks[i] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def auroc(truth: Sequence[bool], scores: Sequence[float]) -> float | None:
    """Area under the ROC curve: P(a positive scores above a negative), ties counting one half
    (the Mann-Whitney U statistic over average ranks)."""
    if len(truth) != len(scores):
        raise ValueError(f"{len(truth)} truths but {len(scores)} scores")
    n_pos = sum(1 for t in truth if t)
    n_neg = len(truth) - n_pos
    if not (n_pos and n_neg):
        return None
    ranks = average_ranks(scores)
    rank_sum = sum(r for r, t in zip(ranks, truth, strict=True) if t)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson correlation of two equal-length series; None when either is constant."""
    if len(x) != len(y):
        raise ValueError(f"series of lengths {len(x)} and {len(y)}")
    n = len(x)
    if n < 2:
        return None
    mx, my = math.fsum(x) / n, math.fsum(y) / n
    sxy = math.fsum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sxx = math.fsum((a - mx) ** 2 for a in x)
    syy = math.fsum((b - my) ** 2 for b in y)
    if sxx == 0 or syy == 0:
        return None
    return max(-1.0, min(1.0, sxy / math.sqrt(sxx * syy)))


def group_accuracy(
    groups: Sequence[Hashable], truth: Sequence[bool], pred: Sequence[bool]
) -> dict[Hashable, float]:
    """Accuracy within each group (e.g. each activation quantile), groups in first-seen order."""
    members: dict[Hashable, list[int]] = {}
    for i, group in enumerate(groups):
        members.setdefault(group, []).append(i)
    return {
        g: sum(1 for i in idx if bool(truth[i]) == bool(pred[i])) / len(idx)
        for g, idx in members.items()
    }


def binary_metrics(truth: Sequence[bool], pred: Sequence[bool]) -> dict[str, float | int | None]:
    """Delphi's reported set for a yes/no judge: accuracy, balanced accuracy, precision, recall,
    F1 and the AUC of the answers taken as scores, over the answered examples."""
    return {
        "accuracy": accuracy(truth, pred),
        "balanced_accuracy": balanced_accuracy(truth, pred),
        "precision": precision(truth, pred),
        "recall": recall(truth, pred),
        "f1": f1(truth, pred),
        "auc": auroc(truth, [float(p) for p in pred]),
        "n_positive": sum(1 for t in truth if t),
        "n_negative": sum(1 for t in truth if not t),
    }
