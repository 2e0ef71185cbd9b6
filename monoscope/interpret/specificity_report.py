"""The specificity report: rubric grades counted per activation interval (per feature and
pooled), written as JSON and as the paper's stacked histogram (PNG), and read back as one mean
grade per feature for the features-vs-neurons comparison."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from monoscope import plotting
from monoscope.artifacts import atomic_write_json

GRADES = (0, 1, 2, 3)
NOT_FIRING = "not firing"
REPORT_FILE = "specificity.json"
PLOT_FILE = "specificity.png"
RUBRIC = {
    "0": "completely irrelevant throughout the context",
    "1": "related to the context, but not near the highlighted text, or only vaguely related",
    "2": "only loosely related to the highlighted text, or related to the context near it",
    "3": "cleanly identifies the activating text",
}
"""Short labels of the rubric (the full wording is the prompt file's)."""
_COLOURS = ("#d9d9d9", "#fdd49e", "#fc8d59", "#b30000", "#6a51a3")
"""Grades 0-3 from pale to strong, then unparsable answers."""


def interval_labels(n_intervals: int) -> list[str]:
    """'not firing', then '0' (lowest) to str(n_intervals - 1)."""
    return [NOT_FIRING, *(str(i) for i in range(n_intervals))]


def interval_bounds(n_intervals: int) -> list[dict[str, Any]]:
    """Each interval's label and activation range [lo, hi) as fractions of the feature's max
    (None for the non-firing windows)."""
    bounds: list[dict[str, Any]] = [{"label": NOT_FIRING, "lo": None, "hi": None}]
    for i in range(n_intervals):
        bounds.append({"label": str(i), "lo": i / n_intervals, "hi": (i + 1) / n_intervals})
    return bounds


def tally(records: list[dict[str, Any]], labels: list[str]) -> dict[str, Any]:
    """Grades per interval: {intervals: {label: {counts [4], n, n_unparsable, mean}},
    n_unparsable, mean_firing} (mean_firing: the mean grade over every firing window)."""
    intervals: dict[str, dict[str, Any]] = {}
    for label in labels:
        grades = [r["grade"] for r in records if r["interval"] == label]
        parsed = [g for g in grades if g is not None]
        intervals[label] = {
            "counts": [parsed.count(g) for g in GRADES],
            "n": len(grades),
            "n_unparsable": len(grades) - len(parsed),
            "mean": sum(parsed) / len(parsed) if parsed else None,
        }
    firing = [r["grade"] for r in records if r["interval"] != NOT_FIRING and r["grade"] is not None]
    return {
        "intervals": intervals,
        "n_unparsable": sum(v["n_unparsable"] for v in intervals.values()),
        "mean_firing": sum(firing) / len(firing) if firing else None,
    }


def call_totals(records: list[dict[str, Any]]) -> dict[str, Any]:
    """How many judge calls the report rests on, how many the cache answered, what they cost."""
    return {
        "n": len(records),
        "cached": sum(bool(r["cached"]) for r in records),
        "cost_usd": round(sum(r["cost_usd"] for r in records), 6),
    }


def write_report(report: dict[str, Any], out: Path, plot: bool = True) -> list[Path]:
    """specificity.json (and specificity.png) in `out`, each written atomically."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / REPORT_FILE, report)
    written = [out / REPORT_FILE]
    if plot:
        plot_histogram(report, out / PLOT_FILE)
        written.append(out / PLOT_FILE)
    return written


def require_matplotlib() -> None:
    plotting.require_matplotlib("the specificity plot", "--no-plot")


def plot_histogram(report: dict[str, Any], path: Path) -> None:
    """The pooled grades per activation interval as stacked bars, counts above and shares
    below, like the paper's specificity figure; PNG written atomically."""
    require_matplotlib()
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    pooled = report["pooled"]["intervals"]
    labels = list(pooled)
    ticks = [_tick(label, report["n_intervals"]) for label in labels]
    # [5, intervals]: grades 0-3, then unparsable answers
    stacks = np.array(
        [[pooled[lab]["counts"][g] for lab in labels] for g in GRADES]
        + [[pooled[lab]["n_unparsable"] for lab in labels]],
        dtype=float,
    )
    names = [f"{g}: {RUBRIC[str(g)]}" for g in GRADES] + ["unparsable answer"]
    fig = Figure(figsize=(9, 7))
    counts_ax, share_ax = fig.subplots(2, 1, sharex=True)
    shares = stacks / np.maximum(stacks.sum(axis=0), 1)
    for ax, heights in ((counts_ax, stacks), (share_ax, shares)):
        bottoms = np.cumsum(heights, axis=0) - heights
        for i, name in enumerate(names):
            ax.bar(ticks, heights[i], bottom=bottoms[i], color=_COLOURS[i], label=name)
    counts_ax.set_ylabel("windows graded")
    share_ax.set_ylabel("share of the interval's windows")
    share_ax.set_xlabel("activation interval (fraction of each feature's max activation)")
    share_ax.tick_params(axis="x", labelrotation=45)
    counts_ax.legend(fontsize=7, loc="upper left")
    counts_ax.set_title(
        f"Specificity of {len(report['features'])} features' explanations, "
        f"judge {report.get('judge', 'unnamed')} ({report['prompt_version']})"
    )
    plotting.save_png(fig, path)


def _tick(label: str, n_intervals: int) -> str:
    if label == NOT_FIRING:
        return "not\nfiring"
    i = int(label)
    return f"{i / n_intervals:.0%}-{(i + 1) / n_intervals:.0%}"


def feature_means(report: dict[str, Any] | str | Path) -> dict[int, float]:
    """Each graded feature's mean rubric grade over its firing windows (its specificity, 0-3),
    from a report or the path of its JSON; features with no parsable firing grade are left out."""
    data = report if isinstance(report, dict) else json.loads(Path(report).read_text("utf-8"))
    return {
        f["feature"]: f["mean_firing"] for f in data["features"] if f["mean_firing"] is not None
    }
