"""The figures of `compare-neurons`: the max-|r| histogram, and features vs neurons per score.

matplotlib's object API only (no pyplot: no GUI backend, no process-wide state); every PNG is
written atomically.
"""

from __future__ import annotations

import random
from pathlib import Path

from monoscope import plotting

FEATURE_COLOUR, NEURON_COLOUR = "#1f77b4", "#d62728"


def require_matplotlib() -> None:
    plotting.require_matplotlib("compare-neurons plots", "pass --no-plots")


def plot_correlation_histogram(correlation: dict, path: Path) -> None:
    """Histogram of each sampled feature's max |r| with any earlier neuron, the threshold
    marked (the paper: 82% of features at or below 0.3)."""
    from matplotlib.figure import Figure

    hist, threshold = correlation["histogram"], correlation["threshold"]
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    ax.stairs(hist["counts"], hist["edges"], fill=True, color=FEATURE_COLOUR)
    ax.axvline(threshold, color="k", linestyle="--", linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_xlabel(
        "max |Pearson r| with any MLP neuron of layers "
        f"{correlation['layers'][0]}-{correlation['layers'][-1]}"
    )
    ax.set_ylabel("features")
    ax.set_title(
        f"{correlation['n_sampled']} random features, {correlation['tokens']:,} tokens: "
        f"{correlation['fraction_at_most_threshold']:.0%} have max |r| ≤ {threshold:g}"
    )
    plotting.save_png(fig, path)


def plot_side_by_side(groups: dict[str, dict], path: Path, ylabel: str, seed: int = 0) -> None:
    """One panel per name in `groups` ({name: {"features": [...], "neurons": [...], "chance":
    float or None}}): box plots with the points jittered over them, features left, neurons
    right, chance dashed."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.2 * len(groups) + 0.5, 4))
    axes = fig.subplots(1, len(groups), squeeze=False)[0]
    jitter = random.Random(seed)
    for ax, (name, sides) in zip(axes, groups.items(), strict=True):
        data = [sides["features"], sides["neurons"]]
        ax.boxplot(data, showfliers=False, widths=0.5)
        colours = (FEATURE_COLOUR, NEURON_COLOUR)
        for x, (values, colour) in enumerate(zip(data, colours, strict=True), 1):
            xs = [x + jitter.uniform(-0.15, 0.15) for _ in values]
            ax.scatter(xs, values, s=8, alpha=0.5, color=colour)
        ax.set_xticks([1, 2], [f"features\n(n={len(data[0])})", f"neurons\n(n={len(data[1])})"])
        if sides.get("chance") is not None:
            ax.axhline(sides["chance"], color="grey", linestyle="--", linewidth=1, label="chance")
            ax.legend(fontsize=7)
        ax.set_title(name)
        ax.set_ylabel(ylabel)
    plotting.save_png(fig, path)
