"""`SparseAutoencoder`: parameters, input scaling, encode/decode and saving, shared by every
architecture; `TrainStep`: what one training step reports.

Two spaces. Callers pass raw activations x [batch, d_in] and get reconstructions in raw units;
inside, the SAE works on x * cfg.input_scale (the "normalised" space: E||x * scale|| = sqrt(d_in)),
where its parameters and its training loss live. Feature activations are reported in the
architecture's `activation_convention` (see config.py).
"""

from __future__ import annotations

import abc
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor, nn

from monoscope.artifacts import atomic_write_bytes, json_bytes
from monoscope.sae.checksums import write_checksums
from monoscope.sae.config import SAEConfig
from monoscope.sae.files import CONFIG_FILE, WEIGHTS_FILE, SAEFormatError
from monoscope.sae.normalization import denormalise_tokens, normalise_tokens
from monoscope.sae.shares import BatchShares
from monoscope.sae.sparse import DeferredGradient, Pattern
from monoscope.sae.step_memory import StepMemory
from monoscope.tensorfiles import atomic_write_safetensors, file_size

if TYPE_CHECKING:
    from monoscope.sae.training import SampleStart, TrainingDefaults

DENSE_CODE_BYTES = 16 * 2**20
"""`sparse_codes` forms dense codes [rows, n_features] this many bytes at a time (~450 rows at
9,216 latents: a whole batch of 4,096 would be 151 MB)."""


@dataclass
class TrainStep:
    """The outcome of `SparseAutoencoder.training_step` on one batch (normalised space)."""

    loss: Tensor
    """Scalar training loss: backpropagate this."""
    mse: Tensor
    """Mean over the batch of ||x_n - x_hat_n||^2, detached."""
    sparsity: Tensor
    """The sparsity term before its coefficient (relu: mean Σ f_i ||W_dec_i||; jumprelu: mean
    L0; topk, batchtopk: the AuxK loss), detached."""
    l0: Tensor
    """Mean number of active latents per token, detached."""
    fired: Tensor
    """[n_features] bool: latents active anywhere in the batch."""
    fvu: Tensor
    """Σ||x - x_hat||^2 / Σ||x - mean_batch(x)||^2 over the batch, detached."""
    deferred: tuple[tuple[Tensor, DeferredGradient], ...] = ()
    """(parameter, its gradient) pairs the backward leaves to be formed later, each
    parameter then without `.grad` (only with a `step_memory`): see
    monoscope.train.step.apply_gradients."""


class SparseAutoencoder(nn.Module, metaclass=abc.ABCMeta):
    """x_hat = decode(encode(x)); parameters in the normalised space.

    W_enc [d_in, n_features], b_enc [n_features], W_dec [n_features, d_in], b_dec [d_in].
    """

    arch: ClassVar[str]
    convention: ClassVar[str] = "f"
    """How activations are reported (`SAEConfig.activation_convention`): "f", or
    "f*||W_dec_i||" (ReLU, as Scaling Monosemanticity reports them)."""
    subtracts_b_dec: ClassVar[bool] = False
    """Whether b_dec is subtracted before encoding by default (Gao et al.'s TopK; not the April
    2024 update's ReLU nor Gemma Scope's JumpReLU)."""
    uses_k: ClassVar[bool] = False
    """Whether the config's k (active latents per token) applies."""
    compute_dtypes: ClassVar[tuple[str, ...]] = ("float32",)
    data_parallel: ClassVar[bool] = False
    """Whether `training_step` on equal slices of a batch returns each slice's share of the
    whole batch's loss (`batch_shares`), so that it trains across processes."""
    feature_shardable: ClassVar[bool] = False
    """Whether `train --shard-features` can split its dictionary over processes
    (monoscope.sae.sharded)."""

    @classmethod
    def check_config(cls, cfg: SAEConfig) -> None:
        """ValueError for a config this architecture cannot hold beyond what SAEConfig checks
        for every architecture (called by SAEConfig itself)."""

    """The `SAEConfig.compute_dtype` values this architecture's training step implements."""
    # What the trainer reads of a trainable architecture (sae/training.py); the fixed
    # dictionaries (neurons, imported gated and groupmax SAEs) declare none of it.
    sparsity: ClassVar[str]
    start_settings: ClassVar[tuple[str, ...]]
    training_defaults: ClassVar[TrainingDefaults]
    short_run_recipe: ClassVar[TrainingDefaults]
    paper_recipe: ClassVar[TrainingDefaults]
    if TYPE_CHECKING:

        def start_from_sample(self, sample: Tensor, start: SampleStart) -> None: ...

    step_memory: StepMemory | None = None
    """Set by a training loop that drops each step's gradients before the next backward and
    keeps no reference to them (as monoscope's trainer does): `training_step` then writes its
    large tensors, gradients included, into the memory of the last step's (step_memory.py),
    and may leave gradients to be formed after the backward (`TrainStep.deferred`), which
    the loop must then form: monoscope.train.step.apply_gradients does."""

    batch_shares: BatchShares = BatchShares()
    """Set by a data-parallel training loop: the batches `training_step` gets are slices of
    the whole batch, whose loss it then returns its share of (shares.py)."""

    def __init__(self, cfg: SAEConfig) -> None:
        if cfg.arch != self.arch:
            raise ValueError(f"{type(self).__name__} is a {self.arch} SAE, not {cfg.arch}")
        if cfg.compute_dtype not in self.compute_dtypes:
            raise ValueError(
                f"{self.arch} SAEs train with compute_dtype {' or '.join(self.compute_dtypes)}, "
                f"not {cfg.compute_dtype!r}"
            )
        super().__init__()
        self.cfg = cfg
        d, n = cfg.d_in, cfg.n_features
        self.W_enc = nn.Parameter(torch.zeros(d, n))
        self.b_enc = nn.Parameter(torch.zeros(n))
        self.W_dec = nn.Parameter(torch.zeros(n, d))
        self.b_dec = nn.Parameter(torch.zeros(d))
        if cfg.skip_connection:
            self.W_skip = nn.Parameter(torch.zeros(d, d))

    # -- initialisation ------------------------------------------------------------------
    @abc.abstractmethod
    def reset_parameters(self, generator: torch.Generator) -> None:
        """Initialise every parameter as the architecture's paper does."""

    @torch.no_grad()
    def init_tied(self, generator: torch.Generator, decoder_norm: float = 1.0) -> None:
        """Decoder rows random directions of norm `decoder_norm`, the encoder their transpose,
        biases 0: the initialisation all four papers share (they differ in the norm)."""
        W_dec = random_directions(self.cfg.n_features, self.cfg.d_in, generator)
        if decoder_norm != 1.0:
            W_dec *= decoder_norm
        self.W_dec.copy_(W_dec)
        self.W_enc.copy_(W_dec.t())
        self.b_enc.zero_()
        self.b_dec.zero_()

    @torch.no_grad()
    def init_b_dec(self, sample: Tensor, iterations: int = 50) -> None:
        """Set b_dec to the geometric median of a sample of raw activations [n, d_in].

        Weiszfeld's iterations in the normalised space, from the mean (Gao et al. 2024 initialise
        the pre-encoder bias so; it is more robust to outlier tokens than the mean).
        """
        points = self.normalise(sample).double()
        median = points.mean(0)
        for _ in range(iterations):
            weights = 1.0 / (points - median).norm(dim=-1).clamp_min(1e-8)
            updated = (weights[:, None] * points).sum(0) / weights.sum()
            step = (updated - median).norm()
            median = updated
            if step <= 1e-6 * median.norm().clamp_min(1e-12):
                break
        self.b_dec.copy_(median.to(self.b_dec.dtype))

    # -- inference -------------------------------------------------------------------------
    @torch.no_grad()
    def firing_cuts(
        self,
        sample: Tensor,
        l0: float,
        columns_per_pass: int = 1024,
        of_features: int | None = None,
    ) -> Tensor:
        """Per latent [n_features], the pre-activation above which it fires on about
        l0 / of_features (default n_features: a slice of a dictionary passes the whole's size)
        of the raw `sample` [n, d_in]: its (fires + 1)-th largest, with fires at least one and
        below n (a small sample sets it only roughly)."""
        n_rows, n = sample.shape[0], self.cfg.n_features
        fires = min(max(1, round(n_rows * l0 / (of_features or n))), n_rows - 1)
        x = self.encoder_input(self.normalise(sample))
        cuts = []
        for start in range(0, n, columns_per_pass):
            cols = slice(start, start + columns_per_pass)
            pre = torch.addmm(self.b_enc[cols], x, self.W_enc[:, cols])
            cuts.append(pre.topk(fires + 1, dim=0).values[-1])
        return torch.cat(cuts)

    @torch.no_grad()
    def least_squares_scale(self, sample: Tensor, rows_per_pass: int = 1024) -> float:
        """<x - b_dec, x̂ - b_dec> / ||x̂ - b_dec||² over the raw `sample` [n, d_in] (normalised
        space): the factor on the reconstruction that fits the sample best; 1 when x̂ = b_dec."""
        scale = self.cfg.input_scale
        return least_squares_factor(
            sample.split(rows_per_pass),
            self.normalise,
            lambda rows: self.decode(self.encode(rows)) * scale,
            self.b_dec,
        )

    def prepare_rows(self, x: Tensor) -> Tensor:
        """Raw activations [..., d_in] in the parameters' dtype, each row mapped by the
        config's per-token `input_norm` (normalization.py; none by default), not yet scaled
        by input_scale: what every encoder path reads."""
        x = x.to(self.W_enc.dtype)
        return x if self.cfg.input_norm == "none" else normalise_tokens(x, self.cfg.input_norm)

    def normalise(self, x: Tensor) -> Tensor:
        """Raw activations [..., d_in] -> the normalised space the parameters live in."""
        return self.prepare_rows(x) * self.cfg.input_scale

    def finish_reconstruction(self, x_hat: Tensor, x: Tensor) -> Tensor:
        """`decode`'s reconstruction x_hat [..., d_in] of raw rows x [..., d_in] -> the whole
        reconstruction in raw units, with the terms that depend on the rows themselves and
        that decode cannot know: a per-token `input_norm` undone by the rows' own statistics,
        then a `skip_connection`'s x W_skip^T. x_hat itself for an SAE with neither."""
        cfg = self.cfg
        if cfg.input_norm != "none":
            x_hat = denormalise_tokens(x_hat, x.to(x_hat.dtype), cfg.input_norm)
        if cfg.skip_connection:
            x_hat = x_hat + x.to(self.W_skip.dtype) @ self.W_skip.T
        return x_hat

    def encoder_input(self, x_norm: Tensor) -> Tensor:
        """What the encoder matmul reads: x (normalised), minus b_dec where the config says so."""
        return x_norm - self.b_dec if self.cfg.subtract_b_dec_in_encoder else x_norm

    def pre_activations(self, x: Tensor) -> Tensor:
        """Raw x [..., d_in] -> encoder pre-activations [..., n_features]."""
        return self.encoder_input(self.normalise(x)) @ self.W_enc + self.b_enc

    @abc.abstractmethod
    def encode(self, x: Tensor) -> Tensor:
        """Raw x [..., d_in] -> dense feature activations [..., n_features], in the reporting
        convention."""

    def decode(self, f: Tensor) -> Tensor:
        """Feature activations [..., n_features] (reporting convention) -> raw x_hat [..., d_in]
        (without the terms that depend on the rows themselves, a per-token `input_norm` or a
        skip connection: `finish_reconstruction` adds them; `forward` does both)."""
        return (f.to(self.W_dec.dtype) @ self.W_dec + self.b_dec) / self.cfg.input_scale

    def forward(self, x: Tensor) -> Tensor:
        """The reconstruction of raw x [..., d_in], in raw units."""
        return self.finish_reconstruction(self.decode(self.encode(x)), x)

    def decoder_codes(self, x: Tensor) -> Tensor:
        """Raw x [..., d_in] -> the codes z [..., n_features] the decoder's rows multiply:
        the normalised reconstruction is z @ W_dec + b_dec (`encode`'s activations, unless the
        reporting convention rescales them)."""
        return self.encode(x)

    @torch.no_grad()
    def sparse_codes(self, x: Tensor) -> tuple[Pattern, Tensor]:
        """`decoder_codes` of raw x [rows, d_in] as a CSR pattern over [rows, n_features] and
        its values [nnz]: every nonzero code (an architecture may also list zeros). The dense
        codes exist a block of rows at a time (`DENSE_CODE_BYTES`)."""
        n = self.cfg.n_features
        step = max(1, DENSE_CODE_BYTES // (n * self.W_enc.element_size()))
        counts, cols, values = [], [], []
        for part in x.split(step):
            codes = self.decoder_codes(part)
            flat = codes.view(-1).nonzero().flatten()  # ascending: row-major, as CSR wants
            counts.append(torch.bincount(flat // n, minlength=part.shape[0]))
            cols.append(flat % n)
            values.append(codes.view(-1)[flat])
        crow = torch.zeros(x.shape[0] + 1, dtype=torch.int64, device=x.device)
        torch.cumsum(torch.cat(counts), 0, out=crow[1:])
        return Pattern(crow, torch.cat(cols), x.shape[0], n), torch.cat(values)

    # -- training --------------------------------------------------------------------------
    @abc.abstractmethod
    def training_step(
        self, x: Tensor, coefficient: float, dead_mask: Tensor | None = None
    ) -> TrainStep:
        """The architecture's training loss on raw x [batch, d_in], computed in the normalised
        space. `coefficient` weighs the sparsity term (relu: L1; jumprelu: L0; topk, batchtopk:
        AuxK); `dead_mask` [n_features] bool marks latents the trainer considers dead."""

    def before_optimizer_step(self) -> None:
        """Called after backward, before the optimizer step (gradient constraints)."""

    def gradient_norm(self, extra_squares: list[Tensor] | None = None) -> Tensor:
        """The norm of the whole SAE's gradient; `extra_squares`: the squared norms of
        gradients not formed yet (sharded.py: summed over the processes holding slices)."""
        squares = list(extra_squares or [])
        squares += [
            torch.linalg.vector_norm(p.grad) ** 2 for p in self.parameters() if p.grad is not None
        ]
        return torch.stack(squares).sum().sqrt()

    def clip_gradients(self, max_norm: float) -> None:
        """Scale every gradient so that the whole SAE's norm is at most `max_norm`."""
        torch.nn.utils.clip_grad_norm_(self.parameters(), max_norm)

    def after_optimizer_step(self) -> None:
        """Called after the optimizer step (parameter constraints)."""

    def after_training(self, sample: Tensor) -> None:
        """Called once the weights are final, with raw training rows [n, d_in]: sets what
        inference needs from them (batchtopk's threshold)."""

    def _reconstruction_stats(self, x_norm: Tensor, x_hat: Tensor) -> tuple[Tensor, Tensor]:
        """(per-token squared error [batch], total variance of the whole batch about its
        mean: this slice's, or with `batch_shares` every process's)."""
        squared_error = (x_norm - x_hat).pow(2).sum(-1)
        if self.batch_shares.parts > 1:
            return squared_error, self.batch_shares.total_variance(x_norm.detach())
        variance = (x_norm - x_norm.mean(0)).pow(2).sum().clamp_min(1e-12)
        return squared_error, variance

    # -- files -----------------------------------------------------------------------------
    def save(self, folder: str | Path) -> None:
        """Write folder/config.json and folder/weights.safetensors, each atomically, and
        their checksums (checksums.py) before them."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        weights = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        config = json_bytes(self.cfg.to_json())
        write_checksums(
            folder, {CONFIG_FILE: config}, {WEIGHTS_FILE: (file_size(weights), weights)}
        )
        # Streamed from the weights: the file's bytes are never all in memory beside them.
        atomic_write_safetensors(folder / WEIGHTS_FILE, weights)
        atomic_write_bytes(folder / CONFIG_FILE, config)

    @torch.no_grad()
    def load_weights(self, tensors: dict[str, Tensor], source: str) -> None:
        """Copy `tensors` into the parameters; missing, extra or misshapen keys are named."""
        expected = self.state_dict()
        missing = sorted(set(expected) - set(tensors))
        extra = sorted(set(tensors) - set(expected))
        if missing or extra:
            raise SAEFormatError(
                f"{source}: a {self.arch} SAE has tensors {sorted(expected)}; "
                f"missing {missing}, unexpected {extra}"
            )
        for key, target in expected.items():
            if tuple(tensors[key].shape) != tuple(target.shape):
                raise SAEFormatError(
                    f"{source}: {key} has shape {list(tensors[key].shape)}, expected "
                    f"{list(target.shape)} (d_in={self.cfg.d_in}, "
                    f"n_features={self.cfg.n_features})"
                )
            # A copy, not the tensor read: safetensors maps the file, which may change later.
            target.copy_(tensors[key])

    def extra_repr(self) -> str:
        c = self.cfg
        k = f", k={c.k}" if c.k is not None else ""
        return f"d_in={c.d_in}, n_features={c.n_features}{k}, input_scale={c.input_scale:.4g}"


def covariance_eigh(sample: Tensor) -> tuple[Tensor, Tensor]:
    """(eigenvalues [d] ascending, eigenvectors [d, d] as columns) of the covariance of the
    rows of `sample` [n >= 2, d], in float64."""
    if sample.shape[0] < 2:
        raise ValueError("a covariance needs a sample of 2 rows or more")
    x = sample.double()
    x = x - x.mean(0)
    eigenvalues, eigenvectors = torch.linalg.eigh(x.T @ x / (x.shape[0] - 1))
    return eigenvalues, eigenvectors


def random_directions(n: int, d: int, generator: torch.Generator) -> Tensor:
    """n random unit vectors [n, d], uniform on the sphere."""
    v = torch.randn(n, d, generator=generator)
    norms: Tensor = v.norm(dim=-1, keepdim=True)
    return v / norms


DRAW_ROWS = 4096
"""Rows drawn at a time by `random_direction_rows` (a multiple of 16: see there)."""


def random_direction_rows(n: int, d: int, generator: torch.Generator, span: slice) -> Tensor:
    """The rows `span` [stop - start, d] of `random_directions(n, d, generator)`, drawn
    DRAW_ROWS rows at a time up to the span's end (the rows before it drawn and dropped): a
    slice of a dictionary too large to draw whole in one place.

    The same numbers as the whole draw: torch's CPU normal sampler turns its uniform draws into
    normals 16 at a time, redrawing the last 16 of a tensor whose size is not a multiple of 16;
    every block but the last holds a multiple of 16 numbers, and the last block ends where the
    whole does with at least 16 (tests/unit/test_sharded_sae.py checks it against the whole)."""
    start, stop = span.start or 0, min(span.stop, n)
    bounds = [*range(0, n, DRAW_ROWS), n]
    if len(bounds) > 2 and (n - bounds[-2]) * d < 16:
        del bounds[-2]  # a short tail joins the block before it, as in the whole draw
    pieces = []
    for first, end in itertools.pairwise(bounds):
        if first >= stop:
            break
        block = torch.randn(end - first, d, generator=generator)
        if end > start:
            pieces.append(block[max(start, first) - first : stop - first])
    v = torch.cat(pieces)
    norms: Tensor = v.norm(dim=-1, keepdim=True)
    return v / norms


def least_squares_factor(
    row_blocks: Iterable[Tensor],
    normalise: Callable[[Tensor], Tensor],
    reconstruct: Callable[[Tensor], Tensor],
    b_dec: Tensor,
) -> float:
    """<x - b_dec, x̂ - b_dec> / ||x̂ - b_dec||² summed over blocks of raw rows [rows, d_in],
    x = normalise(rows) and x̂ = reconstruct(rows) in the normalised space: the factor on the
    reconstruction that fits the rows best; 1 when x̂ = b_dec."""
    target_dot = b_dec.new_zeros((), dtype=torch.float64)
    fit_dot = b_dec.new_zeros((), dtype=torch.float64)
    for rows in row_blocks:
        x = normalise(rows) - b_dec
        x_hat = reconstruct(rows) - b_dec
        target_dot += torch.linalg.vecdot(x, x_hat).sum(dtype=torch.float64)
        fit_dot += torch.linalg.vecdot(x_hat, x_hat).sum(dtype=torch.float64)
    return float(target_dot / fit_dot) if fit_dot > 0 else 1.0
