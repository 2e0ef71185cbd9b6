"""`TrainConfig`: everything `monoscope train` needs; field docstrings are the CLI help.

A setting left at None takes its architecture's default, declared on the SAE class
(`training_defaults`, monoscope/sae/training.py); `resolved()` writes those out, and a
checkpoint records them, so that a resumed run keeps the defaults it started with. The
others follow Anthropic's April 2024 update: the sparsity coefficient warmed up over the first
5% of steps, the lr decayed linearly to 0 over the last 20%, gradient-norm clip 1.0, inputs
scaled so that E‖x‖ = √d.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

from monoscope.sae.registry import ARCHITECTURES, TRAINED, archs_where, trained_class
from monoscope.sae.training import (
    RECIPES,
    SPARSITY_K,
    SPARSITY_PENALTY,
    TrainingDefaults,
    recipe_defaults,
)

if TYPE_CHECKING:
    from monoscope.sae import SparseAutoencoder

ARCH_DEFAULTED = tuple(
    f.name for f in fields(TrainingDefaults) if f.name != "lr_reference_features"
)
"""The TrainConfig fields whose None means the architecture's default (under --recipe)."""
DEFAULT_DECAY_FRACTION = 0.2
B_DEC_INITS = ("median", "zero")
ADAM_BASES = ("eigen", "standard")
IDLE_MOMENTA = ("reset", "keep")
LOGGERS = ("none", "wandb", "tensorboard")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _at_least(name: str, value: float | None, low: float, meaning: str) -> None:
    if value is not None and value < low:
        raise ValueError(f"{_flag(name)} must be at least {low} ({meaning}), got {value}")


def _within(name: str, value: float | None, low: float, high: float, meaning: str) -> None:
    if value is not None and not low <= value <= high:
        raise ValueError(f"{_flag(name)} must be in [{low:g}, {high:g}] ({meaning}), got {value}")


def _one_of(name: str, value: str | None, choices: tuple[str, ...]) -> None:
    if value is not None and value not in choices:
        listed = ", ".join(choices[:-1]) + " or " + choices[-1]
        raise ValueError(f"{_flag(name)} must be {listed}, got {value!r}")


@dataclass
class TrainConfig:
    acts: str = "runs/demo/acts"
    """Activation store folder, or a .npy/.safetensors file holding one [n, d] array."""
    out: str = "runs/demo/sae"
    """Output folder of the SAE (config.json, weights.safetensors, train_log.jsonl)."""
    arch: str = field(default="topk", metadata={"choices": ARCHITECTURES})
    """SAE architecture (each one's training defaults: monoscope/sae/<arch>.py)."""
    recipe: str = field(default="default", metadata={"choices": RECIPES})
    """Which of the architecture's recipes fills the settings left unset: 'default' (what won
    at millions of tokens), 'short-run' (tuned for a few hundred steps) or 'paper' (the
    published recipe); docs/training.md lists each."""
    features: str = "16x"
    """Dictionary size: a count (9216) or a multiple of the input width (16x)."""
    k: int | None = None
    """Active latents per token (topk; the batch mean for batchtopk)."""
    tokens: int = 0
    """Training tokens; 0 means one epoch of the store's train split."""
    batch_size: int = 4096
    """Tokens per optimizer step."""
    lr: float | None = None
    """Adam learning rate."""
    decoder_lr_multiple: float | None = None
    """W_dec's learning rate as a multiple of --lr."""
    decoder_init_power: float | None = None
    """topk/batchtopk: the decoder rows start as random directions mapped through Σ^p, Σ the
    covariance of a data sample, then normalised (0: isotropic, as Gao et al.)."""
    adam_basis: str | None = None
    """Coordinates Adam works in: 'eigen' (the eigenbasis of the input covariance; the SAE is
    rotated back before it is saved) or 'standard'."""
    idle_momentum: str | None = None
    """'reset': a latent with no gradient in a batch (it fired nowhere, nor in AuxK) has its
    Adam momentum zeroed, so the step leaves its weights where they are (fewer dead latents);
    'keep': plain Adam, whose momentum goes on moving it."""
    b_enc_init_share: float | None = None
    """topk/batchtopk: b_enc starts at minus this share of each latent's firing cut (the
    pre-activation above which it is among the k / n_features largest on a data sample), with
    the encoder's weights and bias then scaled to the least-squares fit; 0 starts b_enc at 0
    (Gao et al.)."""
    adam_beta1: float | None = None
    """Adam's β1 (β2 is 0.999)."""
    lr_warmup_fraction: float | None = None
    """Fraction of steps over which the learning rate ramps up linearly from 0."""
    b_dec_init: str | None = None
    """Where b_dec starts: 'median' (the geometric median of a sample: Bricken et al. 2023,
    Gao et al. 2024) or 'zero' (the April 2024 recipe's relu; a short relu run wants median)."""
    coefficient: float | None = None
    """Sparsity coefficient (relu: L1 λ; jumprelu: L0 λ; topk, batchtopk: AuxK weight)."""
    target_l0: float = 0.0
    """relu/jumprelu: adjust the coefficient by feedback to reach this mean L0 (0: off)."""
    warmup_fraction: float = 0.05
    """Fraction of steps over which the sparsity coefficient ramps up linearly from 0."""
    decay_fraction: float | None = None
    """Fraction of steps at the end over which the learning rate decays linearly to 0."""
    weight_average: float = 0.0
    """topk/batchtopk: save an exponential moving average of the weights with a time constant
    of this fraction of the steps (0.2 suits short runs), instead of the last weights; the
    learning rate then does not decay unless --decay-fraction says so. Costs one more copy of
    the parameters (0: off)."""
    refit_decoder: float = 0.0
    """Once trained, refit the decoder by least squares to the encoder's codes of the tokens
    trained on (one more pass over them; the codes, L0 and dead latents stay, the rows are no
    longer unit-norm; relu's reported activations, f_i ||W_dec,i||, follow the new norms; the
    refit undoes the L1 penalty's shrinkage), with this ridge, a fraction of the codes' mean energy
    pulling toward the trained rows (0.01 suits; 0: off). Keeps every token's codes in memory
    for the solve (6 bytes a code: 38 MB for 200k tokens at k 32; refused before training
    if they would not fit)."""
    grad_clip: float = 1.0
    """Gradient-norm clipping threshold (0: off)."""
    divergence_fvu: float = 1000.0
    """Stop as diverged when a batch's FVU exceeds this (a NaN or Inf loss always stops the
    run); an SAE that outputs zeros scores the data's uncentred / centred variance ratio
    (~2 for a residual stream), so 1000 is far past any run that is learning (0: off)."""
    compute_dtype: str = "float32"
    """Precision of the dense matmuls of a training step: float32, or bfloat16 (topk,
    batchtopk, relu: parameters, gradients and Adam stay float32)."""
    dead_window: int = 10_000_000
    """A latent not fired within this many tokens counts as dead (the paper: 1e7)."""
    outlier_multiple: float = 10.0
    """Skip tokens whose norm exceeds this multiple of the median norm (0: keep all)."""
    site: str = ""
    """Site to train on when the store holds several (and the site to stream from)."""
    stream_model: str = ""
    """Train straight from this model's forward passes instead of a store (needs --site,
    --corpus and --tokens); nothing but the SAE is written."""
    corpus: str = "builtin"
    """Corpus to stream from (with --stream-model)."""
    context: int = 128
    """Tokens per context when streaming (with --stream-model)."""
    device: str = "auto"
    """Where the SAE, Adam's state and the batches live: auto (CUDA when present), cpu, cuda,
    cuda:N or mps; under torchrun each process takes cuda:LOCAL_RANK."""
    nproc: int = 1
    """Data-parallel processes: `monoscope train --nproc N` starts N with torchrun (gloo
    between CPUs, NCCL between GPUs), each taking 1/N of every batch (the same SAE as one
    process, within rounding). Under torchrun leave it out: torchrun's parser reads --nproc as
    its own --nproc-per-node."""
    shard_features: bool = False
    """Split the dictionary by features over the processes (topk): each holds 1/N of W_enc,
    b_enc, W_dec and their Adam state and reads every whole batch; the top k is chosen over
    all slices. For dictionaries too large for one device; resumes in as many processes."""
    prefetch: int | None = None
    """Batches read ahead on a background thread (pinned and copied asynchronously to CUDA);
    unset: 2 on an accelerator, 0 on the CPU (a thread there takes cores from the step)."""
    seed: int = 0
    """Seed of the initialisation and the data order."""
    checkpoint_every: int = 500
    """Steps between checkpoints (a final one is always written)."""
    log_every: int = 10
    """Steps between lines of train_log.jsonl."""
    logger: str = "none"
    """Also log to 'wandb' or 'tensorboard' (pip install 'monoscope[wandb]' or
    'monoscope[tensorboard]'), or 'none'."""
    overwrite: bool = False
    """Replace a trained SAE at --out instead of refusing."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        trained_class(self.arch)  # an unknown architecture is named with the choices
        self._check_ranges()
        self._check_choices()
        self._check_arch_options()
        if self.refit_decoder and self.stream_model:
            raise ValueError(
                "--refit-decoder needs a second pass over the tokens trained on: train from a "
                "store (--acts), not --stream-model"
            )
        self.n_features(1)  # validates the features string

    def _check_ranges(self) -> None:
        # A batch's FVU (topk's loss, the divergence check) needs its centred variance.
        _at_least("batch_size", self.batch_size, 2, "a batch's FVU needs two rows or more")
        _at_least("k", self.k, 1, "latents per token")
        _at_least("tokens", self.tokens, 0, "0 means one epoch")
        _at_least("target_l0", self.target_l0, 0, "0: off")
        _at_least("grad_clip", self.grad_clip, 0, "0: off")
        _at_least("refit_decoder", self.refit_decoder, 0, "0: off")
        _at_least("dead_window", self.dead_window, 1, "tokens")
        _at_least("checkpoint_every", self.checkpoint_every, 1, "steps")
        _at_least("log_every", self.log_every, 1, "steps")
        _at_least("nproc", self.nproc, 1, "processes")
        _at_least("prefetch", self.prefetch, 0, "batches; unset: by device")
        _at_least("context", self.context, 2, "tokens")
        _at_least("decoder_lr_multiple", self.decoder_lr_multiple, 0, "of --lr")
        _at_least("coefficient", self.coefficient, 0, "a weight")
        _at_least("divergence_fvu", self.divergence_fvu, 0, "0: off")
        _at_least("lr", self.lr, 0, "unset: the architecture's default")
        if self.lr == 0:  # what 0 asked for before None did
            raise ValueError("--lr 0 would not train: leave --lr unset for the default")
        if self.adam_beta1 is not None and not 0 <= self.adam_beta1 < 1:
            raise ValueError(f"--adam-beta1 must be in [0, 1), got {self.adam_beta1}")
        _within("warmup_fraction", self.warmup_fraction, 0, 1, "of the steps")
        _within("lr_warmup_fraction", self.lr_warmup_fraction, 0, 1, "of the steps")
        _within("decay_fraction", self.decay_fraction, 0, 1, "of the steps")
        _within("weight_average", self.weight_average, 0, 1, "0: off")
        _within("decoder_init_power", self.decoder_init_power, 0, 1, "1: Σ itself")
        _within("b_enc_init_share", self.b_enc_init_share, 0, 1, "1: the whole cut")
        if self.outlier_multiple != 0 and self.outlier_multiple < 1:
            raise ValueError(
                f"--outlier-multiple must be 0 (keep all) or at least 1, got "
                f"{self.outlier_multiple}"
            )

    def _check_choices(self) -> None:
        _one_of("recipe", self.recipe, RECIPES)
        _one_of("adam_basis", self.adam_basis, ADAM_BASES)
        _one_of("idle_momentum", self.idle_momentum, IDLE_MOMENTA)
        _one_of("b_dec_init", self.b_dec_init, B_DEC_INITS)
        _one_of("logger", self.logger, LOGGERS)

    def _check_arch_options(self) -> None:
        """Options the architecture would ignore are refused, not dropped."""
        cls = trained_class(self.arch)
        by_k = cls.sparsity == SPARSITY_K
        if self.k is not None and not by_k:
            raise ValueError(
                f"k applies to {archs_where(lambda c: c.sparsity == SPARSITY_K)}; {self.arch} "
                "sets its sparsity with the coefficient or target_l0"
            )
        if self.weight_average and not by_k:
            raise ValueError(
                f"--weight-average applies to {archs_where(lambda c: c.sparsity == SPARSITY_K)}, "
                f"whose sparsity k fixes; {self.arch}'s is set on the last weights, which an "
                "average would not keep"
            )
        if self.target_l0 and cls.sparsity != SPARSITY_PENALTY:
            where = archs_where(lambda c: c.sparsity == SPARSITY_PENALTY)
            raise ValueError(f"--target-l0 applies to {where}; {self.arch} sets L0 with --k")
        for name in ("decoder_init_power", "b_enc_init_share"):
            value = getattr(self, name)
            if value and name not in cls.start_settings:

                def reads(c: type[SparseAutoencoder], name: str = name) -> bool:
                    return name in c.start_settings

                raise ValueError(f"{_flag(name)} applies to {archs_where(reads)}")

    @classmethod
    def default_help(cls, name: str) -> str | None:
        """The CLI help's default of a field left at None: each architecture's value."""
        if name == "decay_fraction":
            return f"{DEFAULT_DECAY_FRACTION}, or 0 with --weight-average"
        if name not in ARCH_DEFAULTED:
            return None
        values = [(c.arch, getattr(c.training_defaults, name)) for c in TRAINED]
        return ", ".join(
            f"{arch} {value:g}" if isinstance(value, float) else f"{arch} {value}"
            for arch, value in values
            if value is not None
        )

    def n_features(self, d_in: int) -> int:
        text = str(self.features).strip().lower()
        try:
            return int(float(text[:-1]) * d_in) if text.endswith("x") else int(text)
        except ValueError:
            raise ValueError(
                f"features must be a count (9216) or a multiple like 16x, got {self.features!r}"
            ) from None

    def resolved(self, n_features: int | None = None) -> TrainConfig:
        """This config with every None written out as the value it stands for (a recipe whose
        lr scales with the dictionary needs `n_features`)."""
        return replace(self, **self.resolved_defaults(n_features))

    def resolved_defaults(self, n_features: int | None = None) -> dict[str, Any]:
        """{field: value} of the fields whose None means a default: what a checkpoint records,
        so that a resumed run keeps the defaults it started with even if a later version
        changes them."""
        defaults = recipe_defaults(trained_class(self.arch), self.recipe)
        values = {
            name: getattr(defaults, name) if getattr(self, name) is None else getattr(self, name)
            for name in ARCH_DEFAULTED
        }
        if self.lr is None:
            values["lr"] = defaults.lr_for(n_features)
        decay = self.decay_fraction
        if decay is None:
            decay = 0.0 if self.weight_average else DEFAULT_DECAY_FRACTION
        return values | {"decay_fraction": decay}


_ZERO_WAS_DEFAULT = ("k", "lr", "decoder_lr_multiple", "adam_beta1")
_NEGATIVE_WAS_DEFAULT = (
    "decoder_init_power",
    "b_enc_init_share",
    "lr_warmup_fraction",
    "coefficient",
    "decay_fraction",
)
_EMPTY_WAS_DEFAULT = ("adam_basis", "idle_momentum", "b_dec_init")


def from_older_version(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings recorded by a version before None meant 'the default', with the values that
    meant it then (0, a negative number or '', by field) as None."""

    def meant_default(name: str, value: object) -> bool:
        if value is None or isinstance(value, bool):
            return False
        if name in _ZERO_WAS_DEFAULT:
            return value == 0
        if name in _NEGATIVE_WAS_DEFAULT:
            return isinstance(value, int | float) and value < 0
        return name in _EMPTY_WAS_DEFAULT and value == ""

    return {name: None if meant_default(name, v) else v for name, v in settings.items()}
