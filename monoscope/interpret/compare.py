"""`monoscope compare-neurons`: are SAE features more than the model's neurons? (Templeton et al.
2024, METHODS.md §5.3.)

Two reports in one folder:
- correlation: for N random live features of the SAE, the max |Pearson r| with any MLP neuron of
  any layer up to the SAE's site, over the tokens of the SAE's activation store (correlation.py);
  the fraction at or below 0.3 (the paper: 82%), its histogram, each feature's best neuron;
- interpretability: the explanation scores (each scorer's headline score) and the specificity
  (mean rubric grade) of up to 100 random features beside 100 random neurons (compare_scores.py),
  from the feature store and the neurons' store (`monoscope neurons`).

Files under --out, each written atomically: report.json (everything), correlation.json (the
histogram and the best matches), correlation_hist.png, scores.png, specificity.png, summary.md.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch import Tensor

from monoscope.analyze.recorded import locate
from monoscope.analyze.schema import FeatureStoreError, open_readonly, read_meta
from monoscope.artifacts import atomic_write_bytes, atomic_write_json, sha256_file
from monoscope.harvest import ActivationStore, StoreError
from monoscope.harvest.store import MANIFEST
from monoscope.interpret import compare_plots, compare_scores
from monoscope.interpret.config import CompareNeuronsConfig
from monoscope.interpret.correlation import best_matches, correlate, upstream_layers
from monoscope.models import LanguageModel, load_model
from monoscope.sae import SparseAutoencoder

PAPER_FRACTION = 0.82
"""Templeton et al. 2024: 82% of features have a best-matching neuron with r ≤ 0.3."""


def _read_store(path: str) -> tuple[dict, dict[str, dict], list[int]]:
    """(meta, latest scores per scorer, live feature ids) of a finished feature store."""
    conn = open_readonly(path)
    try:
        meta = read_meta(conn)
        if not meta.get("complete"):
            raise FeatureStoreError(f"{path} is not finished: run `monoscope analyze` to the end")
        scores = compare_scores.latest_scores(conn)
        live = [i for (i,) in conn.execute("SELECT id FROM features WHERE n_fired > 0 ORDER BY id")]
    finally:
        conn.close()
    return meta, scores, live


def _open_inputs(
    cfg: CompareNeuronsConfig, meta: dict
) -> tuple[SparseAutoencoder, ActivationStore]:
    from monoscope.sae import load_sae

    db = Path(cfg.features_db)
    sae = load_sae(cfg.sae or locate(meta["sae"]["path"], db, "SAE", "--sae"))
    store = ActivationStore(
        cfg.acts or locate(meta["acts"]["path"], db, "activation store", "--acts")
    )
    if sha256_file(store.path / MANIFEST) != meta["acts"]["manifest_sha256"]:
        raise StoreError(f"{store.path} is not the activation store {db} was analysed from")
    if (sae.cfg.n_features, sae.cfg.site) != (meta["sae"]["n_features"], meta["sae"]["site"]):
        raise ValueError(f"the SAE at {cfg.sae or meta['sae']['path']} is not the one of {db}")
    return sae, store


def summarise(max_r: Tensor, threshold: float, bins: int) -> dict:
    """The fraction of max_r [q] (float64) at or below `threshold`, its median, and its
    histogram over [0, 1] in `bins` equal bins [a, b) (the last one closed)."""
    counts = torch.histc(max_r.double(), bins=bins, min=0.0, max=1.0)
    return {
        "n_sampled": max_r.numel(),
        "threshold": threshold,
        "fraction_at_most_threshold": float((max_r.double() <= threshold).double().mean()),
        "paper_fraction": PAPER_FRACTION,
        "median_max_r": float(max_r.double().median()),
        "histogram": {
            "edges": torch.linspace(0, 1, bins + 1, dtype=torch.float64).tolist(),
            "counts": [int(c) for c in counts.tolist()],
        },
    }


def correlation_report(
    cfg: CompareNeuronsConfig, meta: dict, live: list[int], lm: LanguageModel | None
) -> dict:
    """The correlation half: sample, one pass, best matches, the fraction and histogram."""
    start = time.perf_counter()
    if not live:
        raise FeatureStoreError(f"no feature of {cfg.features_db} ever fired: nothing to correlate")
    sae, store = _open_inputs(cfg, meta)
    lm = lm or load_model(cfg.model or meta["model"]["name"])
    store.check_compatible(revision=lm.revision)
    sae = sae.to(lm.device)
    chosen = sorted(random.Random(cfg.seed).sample(live, min(cfg.n_features, len(live))))
    if sae.cfg.site is None:
        raise ValueError(
            f"the SAE of {cfg.features_db} names no site to find the neurons upstream of"
        )
    layers = upstream_layers(sae.cfg.site)
    acc = correlate(
        lm, sae, store, torch.tensor(chosen), layers, cfg.batch_size, cfg.max_tokens, cfg.progress
    )
    best = best_matches(acc)
    return {
        "tokens": next(iter(acc.values())).n,
        "layers": layers,
        "neurons_per_layer": {str(layer): a.sx.numel() for layer, a in acc.items()},
        "n_live": len(live),
        **summarise(best.r.abs(), cfg.threshold, cfg.bins),
        # the fraction had the neurons stopped at each layer (METHODS.md's test stops at L-1)
        "fraction_by_last_layer": {
            str(layer): float((best.per_layer[: i + 1].amax(0) <= cfg.threshold).double().mean())
            for i, layer in enumerate(layers)
        },
        "features": [
            {"feature": f, "max_abs_r": abs(r), "r": r, "layer": la, "neuron": ne}
            for f, r, la, ne in zip(
                chosen, best.r.tolist(), best.layer.tolist(), best.neuron.tolist(), strict=True
            )
        ],
        "seconds": round(time.perf_counter() - start, 3),
    }


def scores_report(cfg: CompareNeuronsConfig, features: dict, neurons: dict) -> tuple[dict, list]:
    """({scorer: comparison}, missing notes) over every scorer either store has."""
    report, missing = {}, []
    for scorer in sorted(set(features) | set(neurons)):
        sides = {"features": features.get(scorer), "neurons": neurons.get(scorer)}
        for name, entry in sides.items():
            if entry is None:
                missing.append(f"no {scorer} scores in the {name}' store")
        ours, theirs = ((e or {}).get("scores", {}) for e in sides.values())
        report[scorer] = compare_scores.compare(ours, theirs, cfg.n_scored, cfg.seed)
        for key in ("judges", "explainers"):
            report[scorer][key] = {k: sorted((e or {}).get(key, ())) for k, e in sides.items()}
        chances = [c for e in sides.values() for c in (e or {}).get("chance", {}).values()]
        known = [c for c in chances if c is not None]
        report[scorer]["chance"] = sum(known) / len(known) if known else None
    if not report:
        missing.append(
            "neither store has explanation scores: run `monoscope explain` and "
            "`monoscope score` on both (e.g. --features random:100)"
        )
    return report, missing


def specificity_report(cfg: CompareNeuronsConfig) -> tuple[dict | None, list]:
    """The mean-grade comparison, or None and a note when a report folder was not given."""
    folders = {"features": cfg.specificity_features, "neurons": cfg.specificity_neurons}
    absent = [k for k, v in folders.items() if not v]
    if absent:
        flags = " and ".join(f"--specificity-{k}" for k in absent)
        return None, [
            f"no specificity comparison: pass {flags} (report folders of `monoscope specificity`)"
        ]
    grades = {k: compare_scores.specificity_scores(v) for k, v in folders.items()}
    return compare_scores.compare(grades["features"], grades["neurons"], cfg.n_scored, cfg.seed), []


def summary_markdown(report: dict) -> str:
    """The report in a few lines of Markdown."""
    c = report["correlation"]
    lines = [
        "# Features vs neurons",
        "",
        f"SAE feature store `{report['features_db']}` ({report['sae']['site']}), neurons' store "
        f"`{report['neurons_db']}` ({report['neurons']['site']}).",
        "",
        "## Correlation with the neurons of earlier layers",
        "",
        f"{c['n_sampled']} random live features (of {c['n_live']}) against every MLP neuron of "
        f"layers {c['layers'][0]}-{c['layers'][-1]} over {c['tokens']:,} tokens: "
        f"**{c['fraction_at_most_threshold']:.1%}** have max |r| ≤ {c['threshold']:g} (the paper: "
        f"{c['paper_fraction']:.0%}); median max |r| {c['median_max_r']:.3f}. "
        "See correlation_hist.png and correlation.json.",
        "",
        "Had the neurons stopped at layer l: "
        + ", ".join(f"{layer}: {f:.0%}" for layer, f in c["fraction_by_last_layer"].items())
        + ".",
        "",
        "## Interpretability: features vs neurons",
        "",
    ]
    rows = {**report["scores"]}
    if report["specificity"] is not None:
        rows["specificity (mean grade 0-3)"] = report["specificity"]
    if rows:
        lines += [
            "| score | features: n, mean, median | neurons: n, mean, median "
            "| P(feature > neuron) | p | chance |",
            "|---|---|---|---|---|---|",
        ]
    else:
        lines.append("No scores to compare yet.")
    for name, r in rows.items():
        cells = [_cell(r["features"]), _cell(r["neurons"])]
        cells += [_number(r["p_features_beat_neurons"]), _number(r["p_value"])]
        cells.append(_number(r.get("chance")))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if report["missing"]:
        lines += ["", "Missing:", "", *(f"- {note}" for note in report["missing"])]
    return "\n".join(lines) + "\n"


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}"


def _cell(side: dict) -> str:
    return f"{side['n']}, {_number(side['mean'])}, {_number(side['median'])}"


def _write(report: dict, out: Path, plots: bool, seed: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    c = report["correlation"]
    atomic_write_json(out / "report.json", report)
    keys: tuple[str, ...] = ("tokens", "layers", "threshold", "fraction_at_most_threshold")
    keys += ("fraction_by_last_layer", "histogram", "features")
    atomic_write_json(out / "correlation.json", {k: c[k] for k in keys})
    atomic_write_bytes(out / "summary.md", summary_markdown(report).encode())
    if not plots:
        return
    compare_plots.plot_correlation_histogram(c, out / "correlation_hist.png")
    scored = {
        name: {"features": r["features"]["values"], "neurons": r["neurons"]["values"]}
        | {"chance": r["chance"]}
        for name, r in report["scores"].items()
    }
    if scored:
        compare_plots.plot_side_by_side(scored, out / "scores.png", "score", seed)
    if report["specificity"] is not None:
        sp = {s: report["specificity"][s]["values"] for s in ("features", "neurons")}
        compare_plots.plot_side_by_side(
            {"specificity": sp}, out / "specificity.png", "mean rubric grade (0-3)", seed
        )


def run_compare_neurons(cfg: CompareNeuronsConfig, lm: LanguageModel | None = None) -> dict:
    """Both halves of the comparison; writes the report folder (cfg.out); returns report.json's
    contents. Missing scores are noted in the report, not an error."""
    if cfg.plots:
        compare_plots.require_matplotlib()  # before the pass, not after it
    meta, feature_scores, live = _read_store(cfg.features_db)
    neuron_meta, neuron_scores, _ = _read_store(cfg.neurons_db)
    if neuron_meta["sae"]["arch"] != "neurons":
        raise ValueError(
            f"{cfg.neurons_db} is not a neurons store (write it with `monoscope neurons`)"
        )
    if neuron_meta["model"] != meta["model"]:
        raise ValueError(
            f"{cfg.neurons_db} holds neurons of {neuron_meta['model']}, but the SAE of "
            f"{cfg.features_db} reads {meta['model']}"
        )
    scores, missing = scores_report(cfg, feature_scores, neuron_scores)
    specificity, more = specificity_report(cfg)
    report = {
        "features_db": cfg.features_db,
        "neurons_db": cfg.neurons_db,
        "config": asdict(cfg),
        "sae": {k: meta["sae"][k] for k in ("site", "arch", "n_features")},
        "neurons": {k: neuron_meta["sae"][k] for k in ("site", "arch", "n_features")},
        "correlation": correlation_report(cfg, meta, live, lm),
        "scores": scores,
        "specificity": specificity,
        "missing": missing + more,
    }
    _write(report, Path(cfg.out), cfg.plots, cfg.seed)
    return report
