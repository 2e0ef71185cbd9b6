"""`evaluate`: an SAE on its store's held-out split -> metrics, eval.json and plots.

The activations are a store folder, or the `.npy`/`.safetensors` [n, d] array an SAE was trained
on: its held-out rows are the ones the trainer held out (the last 5%). Split "train" measures
the other rows (in-sample), "all" every row (both splits of a store: e.g. an imported SAE on
one's own array). An array has no tokens, so there are no splice metrics for it.

eval.json layout:
  format, version      "monoscope.eval", 1
  sae                  site, d_in, n_features, model (from the SAE's config), path (run only)
  store                path, model (null for an array), split ("heldout", "train" or "all"),
                       max_tokens, rows (which rows were measured, in words); for an array also
                       first_row, last_row (inclusive, 0-based) and n_rows (the array's)
  reconstruction       tokens, fvu, explained_variance, mse, mse_per_element, l0,
                       features {n_features, dead_fraction, dense_fraction, dense_threshold,
                                 density_histogram {log10_edges, counts, dead}},
                       when outlier_multiple > 0 (definitions: metrics.py's docstring):
                       without_outliers {median_norm, outlier_multiple, threshold_norm, excluded,
                                         excluded_fraction, tokens, fvu, ...},
                       outliers_only {share_of_variance, share_of_squared_error, tokens, fvu, ...}
  splice               null, or contexts, predictions, ce {clean, sae, sae_with_error,
                       zero_ablation, mean_ablation}, ce_increase, kl {...}, loss_recovered
                       {zero_ablation, mean_ablation} (see splice.py for the conventions)
  seconds              wall time
Undefined values (FVU of data without variance, loss recovered when ablation changes nothing)
are null.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from monoscope.artifacts import atomic_write_json
from monoscope.evaluate.config import EvalConfig, check_split
from monoscope.evaluate.metrics import ReconstructionStats
from monoscope.evaluate.splice import heldout_contexts, run_sae, splice_metrics
from monoscope.harvest import ActivationStore, StoreError
from monoscope.harvest.arrays import ArraySource
from monoscope.models import LanguageModel, load_model
from monoscope.plotting import save_png
from monoscope.runtime import resolve_device

if TYPE_CHECKING:
    from monoscope.sae import SparseAutoencoder

EVAL_FORMAT_VERSION = 1
_STORE_SPLITS = {
    "heldout": "the store's held-out split",
    "train": "the store's train split (in-sample)",
    "all": "both splits of the store (held-out and train)",
}


def _check_reconstructs(sae: SparseAutoencoder) -> None:
    """ValueError for a transcoder: its output is another site's, not a reconstruction."""
    if sae.cfg.transcoder:
        raise ValueError(
            f"the SAE is a transcoder ({sae.cfg.site} -> {sae.cfg.output_site}): it predicts "
            "another site's activations from its input, so eval's reconstruction metrics do "
            "not apply"
        )


def _site(sae: SparseAutoencoder, store: ActivationStore) -> str:
    """The SAE's site; for an SAE that names none (some imports), the store's only site."""
    return sae.cfg.site if sae.cfg.site is not None else store.resolve_site(None)


def check_compatible(
    sae: SparseAutoencoder, store: ActivationStore, lm: LanguageModel | None
) -> str:
    """The SAE's site; StoreError unless the store holds it at the SAE's width (and came from
    `lm`)."""
    site, d_in = _site(sae, store), sae.cfg.d_in
    if site not in store.sites:
        raise StoreError(f"the SAE reads site {site!r}, but store {store.path} holds {store.sites}")
    if store.d(site) != d_in:
        raise StoreError(
            f"the SAE has d_in {d_in}, but site {site!r} of store {store.path} has width "
            f"{store.d(site)}"
        )
    if lm is not None:
        store.check_compatible(revision=lm.revision)
    return site


def _json_safe(value: object) -> object:
    """The report with nan and inf (undefined metrics) as None, which JSON can hold."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def evaluate(
    sae: SparseAutoencoder,
    store: ActivationStore | str | Path,
    model: LanguageModel | str | None = None,
    *,
    batch_size: int = EvalConfig.batch_size,
    max_tokens: int = EvalConfig.max_tokens,
    n_contexts: int = EvalConfig.n_contexts,
    splice_batch: int = EvalConfig.splice_batch,
    outlier_multiple: float = EvalConfig.outlier_multiple,
    split: str = EvalConfig.split,
) -> dict[str, Any]:
    """Metrics of `sae` on the held-out split of `store` (or the train split, or all rows), and
    with `model` the splice metrics: the eval.json document (see the module docstring). `store`
    may also be the path of an [n, d] array file. Options are EvalConfig's fields."""
    start = time.perf_counter()
    check_split(split)
    _check_reconstructs(sae)
    if not isinstance(store, ActivationStore) and Path(store).is_file():
        if model is not None:
            raise ValueError(
                f"{store} is an array file: it has no tokens to run the model on, so no loss "
                "recovered; evaluate on an activation store for splice metrics"
            )
        return _evaluate_array(
            sae, Path(store), split, batch_size, max_tokens, outlier_multiple, start
        )
    store = store if isinstance(store, ActivationStore) else ActivationStore(store)
    lm = load_model(model) if isinstance(model, str) else model
    site = check_compatible(sae, store, lm)
    if lm is not None and split != "heldout":
        raise ValueError("splice metrics are measured on held-out contexts: use split heldout")
    if split == "heldout" and store.heldout_fraction <= 0:
        raise StoreError(f"store {store.path} has no held-out split (heldout_fraction 0)")
    # The trainer's outlier filter: a multiple of the median norm of the train split.
    median = store.median_norm(site) if outlier_multiple > 0 else None
    stats = ReconstructionStats(median, outlier_multiple)
    left = max_tokens or store.n_tokens
    with torch.no_grad():
        # The store's reader stops on a NaN or Inf with the shard and row named.
        for acts, meta in store.rows(site, split=split):
            xs, norms = acts[:left].split(batch_size), meta["norms"][:left].split(batch_size)
            for x, norm in zip(xs, norms, strict=True):
                f, x_hat = run_sae(sae, x)
                stats.update(x.to(x_hat.device), x_hat, f, norm)
            left -= min(left, acts.shape[0])
            if left == 0:
                break
    splice = None
    if lm is not None:
        contexts = heldout_contexts(store.manifest, lm.tokenizer, n_contexts)
        splice = splice_metrics(lm, sae, site, contexts, stats.mean, splice_batch)
    measured = (max_tokens or store.n_tokens) - left
    about = {
        "path": str(store.path),
        "model": store.manifest["model"]["name"],
        "rows": _store_rows(split, measured, max_tokens),
    }
    return _report(sae, site, about, split, max_tokens, stats, splice, start)


def _store_rows(split: str, measured: int, max_tokens: int) -> str:
    """Which rows of a store were measured, in words."""
    if max_tokens and measured == max_tokens:
        return f"the first {measured:,} tokens of {_STORE_SPLITS[split]} (--max-tokens)"
    return f"{_STORE_SPLITS[split]}: all {measured:,} tokens"


def _array_rows(source: ArraySource, split: str, max_tokens: int, path: Path) -> dict[str, Any]:
    """The rows of the array at `path` measured for `split` (at most max_tokens, 0: all):
    {rows (in words), first_row, last_row (inclusive), n_rows (the array's)}."""
    n, n_train, name = source.data.shape[0], source.train.shape[0], path.name
    first, stop = {"heldout": (n_train, n), "train": (0, n_train), "all": (0, n)}[split]
    if stop == first:
        raise StoreError(f"{path} has no {split} rows ({n} in all)")
    whole = {
        "heldout": f"the held-out {(n - n_train) / n:.0%} of {name}",
        "train": f"the train {n_train / n:.0%} of {name} (in-sample)",
        "all": f"all {n:,} rows of {name}",
    }[split]
    if max_tokens and stop - first > max_tokens:
        stop = first + max_tokens
        whole = f"the first {max_tokens:,} of {whole} (--max-tokens)"
    rows = f"{whole}: rows {first:,}..{stop - 1:,}"
    return {"rows": rows, "first_row": first, "last_row": stop - 1, "n_rows": n}


def _evaluate_array(
    sae: SparseAutoencoder,
    path: Path,
    split: str,
    batch_size: int,
    max_tokens: int,
    outlier_multiple: float,
    start: float,
) -> dict[str, Any]:
    """`evaluate` on an array file's rows of `split` ("all": every row), as the trainer split
    them (`start`: the evaluation's start time)."""
    source = ArraySource(path)  # stops on a bad shape or a NaN/Inf, with the row named
    if source.d != sae.cfg.d_in:
        raise StoreError(f"the SAE has d_in {sae.cfg.d_in}, but {path} has width {source.d}")
    about = {"path": str(path), "model": None, **_array_rows(source, split, max_tokens, path)}
    # The trainer's outlier filter: a multiple of the median norm of the train rows.
    median = source.median_norm() if outlier_multiple > 0 else None
    stats = ReconstructionStats(median, outlier_multiple)
    with torch.no_grad():
        for x in source.data[about["first_row"] : about["last_row"] + 1].split(batch_size):
            x = x.float()
            f, x_hat = run_sae(sae, x)
            stats.update(x.to(x_hat.device), x_hat, f, x.norm(dim=-1))
    return _report(sae, sae.cfg.site, about, split, max_tokens, stats, None, start)


def _report(
    sae: SparseAutoencoder,
    site: str | None,
    about: dict[str, Any],
    split: str,
    max_tokens: int,
    stats: ReconstructionStats,
    splice: dict[str, Any] | None,
    start: float,
) -> dict[str, Any]:
    report = {
        "format": "monoscope.eval",
        "version": EVAL_FORMAT_VERSION,
        "sae": {
            "site": site,
            "d_in": sae.cfg.d_in,
            "n_features": sae.cfg.n_features,
            "model": sae.cfg.model,
        },
        "store": {**about, "split": split, "max_tokens": max_tokens},
        "reconstruction": stats.result(),
        "splice": splice,
        "seconds": round(time.perf_counter() - start, 3),
    }
    return {key: _json_safe(value) for key, value in report.items()}


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError(
            "plots need matplotlib: pip install monoscope[plots] (or turn plots off)"
        ) from None


def plot_density(report: dict[str, Any], path: Path) -> None:
    """Write the feature-density histogram of an eval report as a PNG, atomically."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    hist = report["reconstruction"]["features"]["density_histogram"]
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    ax.stairs(hist["counts"], hist["log10_edges"], fill=True)
    ax.set_xlabel("log10 feature density (fraction of tokens on which it fires)")
    ax.set_ylabel("features")
    n_tokens = report["reconstruction"]["tokens"]
    ax.set_title(
        f"{report['sae']['site'] or 'SAE'}: {report['sae']['n_features']:,} features, "
        f"{hist['dead']:,} dead over {n_tokens:,} tokens"
    )
    save_png(fig, path)


def run(
    cfg: EvalConfig, sae: SparseAutoencoder | None = None, lm: LanguageModel | None = None
) -> dict[str, Any]:
    """Evaluate as `cfg` says (`sae`/`lm` given: used, on their devices, instead of loading
    cfg.sae/cfg.model on cfg.device); write eval.json and, with cfg.plots,
    plots/feature_density.png beside it."""
    device = resolve_device(cfg.device)  # a device that is not there fails before any load
    if cfg.plots:
        _require_matplotlib()  # fail before the evaluation, not after it
    if sae is None:
        # Imported on use: evaluating an SAE object (the Python API) needs no SAE loader.
        from monoscope.sae import load_sae

        sae = load_sae(cfg.sae, device=device)
    if lm is None and cfg.model is not None and not Path(cfg.acts).is_file():
        lm = load_model(cfg.model, device=device)
    report = evaluate(
        sae,
        cfg.acts,
        lm if lm is not None else cfg.model,
        batch_size=cfg.batch_size,
        max_tokens=cfg.max_tokens,
        n_contexts=cfg.n_contexts,
        splice_batch=cfg.splice_batch,
        outlier_multiple=cfg.outlier_multiple,
        split=cfg.split,
    )
    report["sae"]["path"] = cfg.sae
    out = cfg.out_path
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, report)
    if cfg.plots:
        plot_density(report, out.parent / "plots" / "feature_density.png")
    return report


def _num(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


_ROWS = (
    ("FVU", "fvu", ".4f"),
    ("explained variance", "explained_variance", ".2%"),
    ("MSE per token", "mse", ".4g"),
    ("MSE per element", "mse_per_element", ".4g"),
    ("L0", "l0", ".1f"),
)


def _reconstruction_lines(rec: dict[str, Any]) -> list[str]:
    """The reconstruction metrics: a column for all tokens and, when outliers are set apart,
    one without them and one for them alone, with the outliers' definition and shares."""
    columns = [("all tokens", rec)]
    clean, alone = rec.get("without_outliers"), rec.get("outliers_only")
    if clean is not None and alone is not None:
        columns.append((f"without {clean['excluded']:,} outliers", clean))
        columns.append(("outliers only", alone))
    lines = [f"{'':24}" + "".join(f"{title:>24}" for title, _ in columns)]
    for label, key, spec in _ROWS:
        lines.append(f"{label:24}" + "".join(f"{_num(c.get(key), spec):>24}" for _, c in columns))
    if clean is not None and alone is not None:
        lines.append(
            f"{'':24}outliers: |x| > {clean['outlier_multiple']:g} x median "
            f"{clean['median_norm']:.4g} = {clean['threshold_norm']:.4g} (the rows train skips)"
        )
        lines.append(
            f"{'':24}{clean['excluded']:,} of {rec['tokens']:,} tokens "
            f"({clean['excluded_fraction']:.3%}): {_num(alone['share_of_variance'], '.1%')} of "
            f"the variance, {_num(alone['share_of_squared_error'], '.1%')} of the squared error"
        )
    return lines


def format_table(report: dict[str, Any]) -> str:
    """The metrics of an eval report as a plain-text table."""
    sae, rec = report["sae"], report["reconstruction"]
    feats = rec["features"]
    lines = [
        f"SAE at {sae['site'] or 'an unnamed site'}: d_in {sae['d_in']} -> "
        f"{sae['n_features']:,} features",
        f"rows: {report['store']['rows']} (in {report['store']['path']})",
        *_reconstruction_lines(rec),
    ]
    # A latent rarer than about one in this many tokens also counts as dead here.
    lines.append(
        f"{'dead features':24}{feats['dead_fraction']:>24.2%}"
        f"   (fired on none of these {rec['tokens']:,} tokens)"
    )
    lines.append(f"{'dense features':24}{feats['dense_fraction']:>24.2%}")
    splice = report.get("splice")
    if splice:
        names = ["clean", "sae", "sae_with_error", "zero_ablation", "mean_ablation"]
        lines.append(f"{'':24}" + "".join(f"{n:>15}" for n in names))
        lines.append(f"{'CE (nats)':24}" + "".join(f"{splice['ce'][n]:>15.4f}" for n in names))
        kl = [f"{'':>15}", *(f"{_num(splice['kl'][n], '.4g'):>15}" for n in names[1:])]
        lines.append(f"{'KL(clean || variant)':24}" + "".join(kl))
        recovered = splice["loss_recovered"]
        lines.append(
            f"{'loss recovered':24}{_num(recovered['zero_ablation'], '.2%')} vs zero ablation, "
            f"{_num(recovered['mean_ablation'], '.2%')} vs mean ablation "
            f"({splice['contexts']} contexts, {splice['predictions']:,} predictions)"
        )
    return "\n".join(lines)
