"""Reconstruction and sparsity metrics of an SAE: pure functions, and an exact streaming version.

Shapes: x, x_hat [tokens, d_in] (activations and their reconstructions, raw units);
f [tokens, n_features] (feature activations). A feature "fires" on a token when f != 0.

FVU = Σ_t ‖x_t − x̂_t‖² / Σ_t ‖x_t − x̄‖², pooled over tokens and dimensions, with x̄ the mean
over tokens of each dimension (the variance of the whole evaluated set around its mean, not per
batch, not around 0, not per token). Explained variance = 1 − FVU.

Outlier rows: given a median norm m and a multiple c > 0 (the trainer's --outlier-multiple; m the
median ‖x‖ of the train split), a row is an outlier when ‖x_t‖ > c·m, exactly the rows training
skips. The metrics are then also given on the other rows alone and on the outliers alone, each
subset S as a data set of its own (FVU_S = SE_S / Σ_{t∈S} ‖x_t − x̄_S‖², centred on S's own
mean), with the outliers' share of the rows, of the variance V_out / V (V_S = Σ_{t∈S} ‖x_t − x̄‖²,
x̄ the mean of all rows) and of the squared error SE_out / SE (SE_S = Σ_{t∈S} ‖x_t − x̂_t‖²).
The pooled FVU is (SE_in + SE_out) / (V_in + V_out): in SmolLM2's residual stream a few dozen
huge-norm rows (the first position after BOS) can carry half of V, so they can decide it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

DENSE_THRESHOLD = 0.1
"""A feature firing on more than this fraction of tokens counts as dense."""


def _ratio(num: float, den: float) -> float:
    # Undefined (nan) when the data has no variance at all, rather than inf or a 0/0 warning.
    return num / den if den > 0 else math.nan


def fvu(x: Tensor, x_hat: Tensor) -> float:
    """Fraction of variance unexplained of x_hat [n, d] as a reconstruction of x [n, d]."""
    x, x_hat = x.double(), x_hat.double()
    residual = (x - x_hat).pow(2).sum().item()
    total = (x - x.mean(dim=0)).pow(2).sum().item()
    return _ratio(residual, total)


def explained_variance(x: Tensor, x_hat: Tensor) -> float:
    """1 − FVU."""
    return 1.0 - fvu(x, x_hat)


def mse(x: Tensor, x_hat: Tensor) -> float:
    """Mean over tokens of the squared error norm ‖x − x̂‖² (x, x_hat [n, d])."""
    return (x.double() - x_hat.double()).pow(2).sum(dim=-1).mean().item()


def mse_per_element(x: Tensor, x_hat: Tensor) -> float:
    """Mean squared error per element: mse / d."""
    return mse(x, x_hat) / x.shape[-1]


def mean_l0(f: Tensor) -> float:
    """Mean number of features firing per token (f [n, n_features])."""
    return (f != 0).sum(dim=-1).double().mean().item()


def firing_counts(f: Tensor) -> Tensor:
    """Tokens on which each feature fires: [n_features] int64."""
    return (f != 0).sum(dim=0)


def densities(counts: Tensor, n_tokens: int) -> Tensor:
    """Firing frequency of each feature [n_features] float64, from its count over n_tokens."""
    return counts.double() / n_tokens


def dead_fraction(density: Tensor) -> float:
    """Share of features that never fired over the evaluated tokens."""
    return (density == 0).double().mean().item()


def dense_fraction(density: Tensor, threshold: float = DENSE_THRESHOLD) -> float:
    """Share of features firing on more than `threshold` of the tokens."""
    return (density > threshold).double().mean().item()


def density_histogram(counts: Tensor, n_tokens: int, bins_per_decade: int = 10) -> dict:
    """Histogram of log10(feature density), dead features counted apart (log10 0 is undefined).

    The bins span [log10(1/n_tokens) rounded down to a decade, 0]: the rarest possible firing
    (once) to always. Returns {"log10_edges": [bins + 1], "counts": [bins], "dead": int}.
    """
    decades = math.ceil(math.log10(n_tokens)) if n_tokens > 1 else 1
    bins = decades * bins_per_decade
    alive = counts[counts > 0].double()
    # log10(count) − log10(n) rather than log10(count / n): exact at count == 1 and count == n,
    # so no value falls outside the edges by a rounding error (histc drops those).
    log_density = (alive.log10() - math.log10(n_tokens)).clamp(-decades, 0.0)
    hist = torch.histc(log_density, bins=bins, min=-decades, max=0.0)
    return {
        "log10_edges": torch.linspace(-decades, 0.0, bins + 1).tolist(),
        "counts": [int(c) for c in hist.tolist()],
        "dead": int((counts == 0).sum()),
    }


def loss_recovered(ce_ablated: float, ce_spliced: float, ce_clean: float) -> float:
    """(CE_ablated − CE_spliced) / (CE_ablated − CE_clean): 1 for a perfect SAE, 0 for one no
    better than the ablation; nan when the ablation does not change the loss."""
    gap = ce_ablated - ce_clean
    return (ce_ablated - ce_spliced) / gap if gap != 0 else math.nan


_METRICS = ("fvu", "explained_variance", "mse", "mse_per_element", "l0")


class _Pool:
    """Exact one-pass sums over a growing set of tokens, in float64.

    Keeps n, the per-dimension mean and M2 = Σ_t (x_t − x̄)² (Chan et al.'s pairwise update),
    the squared-error total and the firing total. Σ‖x − x̄‖² = Σx² − n x̄² computed from raw
    sums loses every digit when the mean is large next to the spread; merging batch means and
    M2s is exact in exact arithmetic and stable in floating point.
    """

    def __init__(self) -> None:
        self.n = 0
        self.mean: Tensor | None = None  # [d] float64
        self.m2: Tensor | None = None  # [d] float64
        self.squared_error = 0.0
        self.active = 0

    def add(self, x: Tensor, squared_error: Tensor, active: Tensor) -> None:
        """x [b, d] float64; squared_error [b] = ‖x − x̂‖² per token; active [b] = L0 per token."""
        b = x.shape[0]
        if b == 0:
            return
        batch_mean = x.mean(dim=0)
        batch_m2 = (x - batch_mean).pow(2).sum(dim=0)
        if self.mean is None or self.m2 is None:
            self.mean, self.m2 = batch_mean, batch_m2
        else:
            n = self.n + b
            delta = batch_mean - self.mean
            self.mean = self.mean + delta * (b / n)
            self.m2 = self.m2 + batch_m2 + delta.pow(2) * (self.n * b / n)
        self.n += b
        self.squared_error += squared_error.sum().item()
        self.active += int(active.sum())

    def variance_about(self, mean: Tensor) -> float:
        """Σ_t ‖x_t − mean‖² over this pool's tokens: M2 + n ‖x̄ − mean‖² (exact)."""
        if self.m2 is None or self.mean is None:
            return 0.0
        return (self.m2.sum() + self.n * (self.mean - mean).pow(2).sum()).item()

    def summary(self) -> dict:
        """The pool's metrics; None for each when it holds no token (a subset may be empty)."""
        if self.m2 is None:
            return {"tokens": 0, **dict.fromkeys(_METRICS)}
        fvu_ = _ratio(self.squared_error, self.m2.sum().item())
        mse_ = self.squared_error / self.n
        return {
            "tokens": self.n,
            "fvu": fvu_,
            "explained_variance": 1.0 - fvu_,
            "mse": mse_,
            "mse_per_element": mse_ / self.m2.shape[0],
            "l0": self.active / self.n,
        }


class ReconstructionStats:
    """Metrics of an SAE over a stream of batches, equal to the one-shot functions on the
    concatenation of all batches.

    With `median_norm` given and outlier_multiple > 0, the reconstruction metrics are also
    reported without, and on only, the outlier tokens (norm over outlier_multiple ×
    median_norm; see the module docstring).
    """

    def __init__(self, median_norm: float | None = None, outlier_multiple: float = 10.0) -> None:
        if outlier_multiple < 0:
            raise ValueError(f"outlier_multiple must be >= 0 (0 disables), got {outlier_multiple}")
        self.median_norm = median_norm
        self.outlier_multiple = outlier_multiple
        self.threshold = (
            outlier_multiple * median_norm
            if median_norm is not None and outlier_multiple > 0
            else None
        )
        self._all = _Pool()
        self._inliers = _Pool()
        self._outliers = _Pool()
        self._counts: Tensor | None = None  # [n_features] int64

    @property
    def mean(self) -> Tensor:
        """Mean activation over every token seen [d] float64 (the mean-ablation baseline)."""
        if self._all.mean is None:
            raise ValueError("no tokens were evaluated")
        return self._all.mean

    def update(self, x: Tensor, x_hat: Tensor, f: Tensor, norms: Tensor | None = None) -> None:
        """Add a batch: x, x_hat [b, d_in]; f [b, n_features]; norms [b], the tokens' ‖x‖ (the
        store's, computed before any dtype cast), computed from x when not given."""
        fires = f != 0  # [b, n_features]
        active, counts = fires.sum(dim=-1), fires.sum(dim=0)  # [b], [n_features]
        # The sums are float64, on the batch's device where it has float64 (MPS has none).
        home = torch.device("cpu") if x.device.type == "mps" else x.device
        active, counts = active.to(home), counts.to(home)
        x64 = x.to(home).double()
        squared_error = (x64 - x_hat.to(home).double()).pow(2).sum(dim=-1)  # [b]
        self._counts = counts if self._counts is None else self._counts + counts
        self._all.add(x64, squared_error, active)
        if self.threshold is not None:
            norms = x64.norm(dim=-1) if norms is None else norms.to(x64.device)
            keep = norms <= self.threshold
            self._inliers.add(x64[keep], squared_error[keep], active[keep])
            self._outliers.add(x64[~keep], squared_error[~keep], active[~keep])

    def result(self) -> dict:
        """{tokens, fvu, explained_variance, mse, mse_per_element, l0, features: {...}} and,
        when outliers are set apart, without_outliers {median_norm, outlier_multiple,
        threshold_norm, excluded, excluded_fraction, the same metrics} and outliers_only
        {share_of_variance, share_of_squared_error, the same metrics} (None where empty)."""
        if self._counts is None:
            raise ValueError("no tokens were evaluated")
        report = self._all.summary()
        n = report["tokens"]
        density = densities(self._counts, n)
        report["features"] = {
            "n_features": int(density.shape[0]),
            "dead_fraction": dead_fraction(density),
            "dense_fraction": dense_fraction(density),
            "dense_threshold": DENSE_THRESHOLD,
            "density_histogram": density_histogram(self._counts, n),
        }
        if self.threshold is not None:
            report["without_outliers"] = {
                "median_norm": self.median_norm,
                "outlier_multiple": self.outlier_multiple,
                "threshold_norm": self.threshold,
                "excluded": self._outliers.n,
                "excluded_fraction": self._outliers.n / n,
                **self._inliers.summary(),
            }
            variance = self._all.variance_about(self.mean)
            report["outliers_only"] = {
                "share_of_variance": _ratio(self._outliers.variance_about(self.mean), variance),
                "share_of_squared_error": _ratio(
                    self._outliers.squared_error, self._all.squared_error
                ),
                **self._outliers.summary(),
            }
        return report
