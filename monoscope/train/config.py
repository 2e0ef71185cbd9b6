"""`TrainConfig`: everything `monoscope train` needs; field docstrings are the CLI help.

Defaults follow Anthropic's April 2024 update for `relu` (Adam 0.9/0.999, λ = 5 warmed up over
the first 5% of steps, learning rate decayed linearly to 0 over the last 20%, gradient-norm clip
1.0, inputs scaled so E‖x‖ = √d) and Gao et al. 2024 for `topk` (AuxK coefficient 1/32), with
what the quality benchmark measured for short runs (docs/LOG.md, 2026-11-25 and 2026-11-26) on
top: TopK's learning rate, the decoder's multiple of it, its linear warm-up and Adam's β1.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

ARCHS = ("relu", "topk", "batchtopk", "jumprelu")


@dataclass(frozen=True)
class ArchDefaults:
    lr: float
    coefficient: float
    adam_beta1: float
    lr_warmup_fraction: float
    b_dec_init: str
    decoder_lr_multiple: float = 1.0
    decoder_init_power: float = 0.0
    adam_basis: str = "standard"
    idle_momentum: str = "keep"
    b_enc_init_share: float = 0.0


# relu: lr 5e-5, λ = 5, Adam β1 0.9, no lr warm-up, zero biases (APR24 as reimplemented,
# secondary source; SM's λ convention needs E‖x‖² ≈ d). topk/batchtopk: the coefficient is
# AuxK's 1/32 and b_dec starts at the geometric median (Gao et al.); lr, β1 and the lr warm-up
# chosen by the quality benchmark for runs of tens to hundreds of steps (docs/LOG.md); the
# unit-norm decoder rows learn at 5x the encoder's rate (lower FVU and a third of the dead
# latents at 46, 92 and 184 steps), and start as random directions shaped by Σ^(1/8) of the
# data (lower FVU at 46 and 92 steps, as many dead latents).
# jumprelu: λ of the L0 penalty, in units of the summed MSE; zero biases (Gemma Scope).
# topk trains in the eigenbasis of the input covariance (monoscope.train.basis), where Adam's
# per-coordinate steps fit the residual stream's unequal directions: FVU 0.161 -> 0.158 / 0.133
# -> 0.127 / 0.112 -> 0.109 after 1 / 2 / 4 epochs, as many dead latents, at lr 3e-3 with the
# decoder at 4x (re-tuned there). batchtopk measured no gain there and keeps the standard basis;
# relu loses badly there (FVU 0.24 -> 0.46, 94% dead). topk zeroes the Adam momentum of
# latents without a gradient (monoscope.train.idle): at lr 3e-3 as low an FVU with a quarter
# of the dead latents, and since the dead latents that held the lr at 3e-3 are gone, lr 4e-3:
# FVU 0.1526 / 0.1242 / 0.1071 after 1 / 2 / 4 epochs with 3.7-6.1% dead on the held-out
# tokens (docs/LOG.md, seventh session). batchtopk measured slightly worse with the reset, and
# relu keeps the paper's plain Adam.
# topk and batchtopk start b_enc a quarter of each latent's firing cut below 0, the encoder's
# scale refitted: half topk's dead latents after one epoch (3.7% -> 1.8%), FVU 0.1526 -> 0.1513;
# batchtopk 27% dead instead of 33% at the same FVU (docs/LOG.md, ninth session).
_BATCHTOPK = ArchDefaults(
    lr=2.5e-3,
    coefficient=1 / 32,
    adam_beta1=0.8,
    lr_warmup_fraction=0.1,
    b_dec_init="median",
    decoder_lr_multiple=5.0,
    decoder_init_power=0.125,
    b_enc_init_share=0.25,
)
_TOPK = replace(
    _BATCHTOPK, lr=4e-3, decoder_lr_multiple=4.0, adam_basis="eigen", idle_momentum="reset"
)
DEFAULTS: dict[str, ArchDefaults] = {
    "relu": ArchDefaults(
        lr=5e-5, coefficient=5.0, adam_beta1=0.9, lr_warmup_fraction=0.0, b_dec_init="zero"
    ),
    "topk": _TOPK,
    "batchtopk": _BATCHTOPK,
    "jumprelu": ArchDefaults(
        lr=1e-3, coefficient=0.5, adam_beta1=0.9, lr_warmup_fraction=0.0, b_dec_init="zero"
    ),
}
B_DEC_INITS = ("median", "zero")
DEFAULT_K = 32
DEFAULT_DECAY_FRACTION = 0.2
ADAM_BASES = ("eigen", "standard")
IDLE_MOMENTA = ("reset", "keep")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _at_least(name: str, value: float, low: float, meaning: str) -> None:
    if value < low:
        raise ValueError(f"{_flag(name)} must be at least {low} ({meaning}), got {value}")


@dataclass
class TrainConfig:
    acts: str = "runs/demo/acts"
    """Activation store folder, or a .npy/.safetensors file holding one [n, d] array."""
    out: str = "runs/demo/sae"
    """Output folder of the SAE (config.json, weights.safetensors, train_log.jsonl)."""
    arch: str = "topk"
    """Architecture: relu (the paper's recipe), topk, batchtopk or jumprelu."""
    features: str = "16x"
    """Dictionary size: a count (9216) or a multiple of the input width (16x)."""
    k: int = 0
    """Active latents per token (topk; the batch mean for batchtopk); 0 means 32."""
    tokens: int = 0
    """Training tokens; 0 means one epoch of the store's train split."""
    batch_size: int = 4096
    """Tokens per optimizer step."""
    lr: float = 0.0
    """Adam learning rate; 0 means the architecture's default (relu 5e-5, topk 4e-3,
    batchtopk 2.5e-3)."""
    decoder_lr_multiple: float = 0.0
    """W_dec's learning rate as a multiple of --lr; 0 means the architecture's default (topk
    4, batchtopk 5, relu and jumprelu 1)."""
    decoder_init_power: float = -1.0
    """topk/batchtopk: the decoder rows start as random directions mapped through Σ^p, Σ the
    covariance of a data sample, then normalised (0: isotropic, as Gao et al.); negative means
    the architecture's default (0.125)."""
    adam_basis: str = ""
    """Coordinates Adam works in: 'eigen' (the eigenbasis of the input covariance; the SAE is
    rotated back before it is saved) or 'standard'; empty means the architecture's default
    (topk eigen, the others standard)."""
    idle_momentum: str = ""
    """'reset': a latent with no gradient in a batch (it fired nowhere, nor in AuxK) has its
    Adam momentum zeroed, so the step leaves its weights where they are (a quarter of topk's
    dead latents at the same FVU); 'keep': plain Adam, whose momentum goes on moving it; empty
    means the architecture's default (topk reset, the others keep)."""
    b_enc_init_share: float = -1.0
    """topk/batchtopk: b_enc starts at minus this share of each latent's firing cut (the
    pre-activation above which it is among the k / n_features largest on a data sample), with
    the encoder's weights and bias then scaled to the least-squares fit; 0 starts b_enc at 0
    (Gao et al.); negative means the architecture's default (0.25)."""
    adam_beta1: float = 0.0
    """Adam's β1; 0 means the architecture's default (relu 0.9, topk 0.8). β2 is 0.999."""
    lr_warmup_fraction: float = -1.0
    """Fraction of steps over which the learning rate ramps up linearly from 0; negative
    means the architecture's default (relu none, topk 0.1)."""
    b_dec_init: str = ""
    """Where b_dec starts: 'median' (the geometric median of a sample: Bricken et al. 2023,
    Gao et al. 2024) or 'zero'; empty means the architecture's default (topk median, relu
    zero as in the April 2024 recipe; a short relu run wants median)."""
    coefficient: float = -1.0
    """Sparsity coefficient (relu: L1 λ, default 5; jumprelu: L0 λ; topk: AuxK weight, 1/32);
    negative means the architecture's default."""
    target_l0: float = 0.0
    """relu/jumprelu: adjust the coefficient by feedback to reach this mean L0 (0: off)."""
    warmup_fraction: float = 0.05
    """Fraction of steps over which the sparsity coefficient ramps up linearly from 0."""
    decay_fraction: float = -1.0
    """Fraction of steps at the end over which the learning rate decays linearly to 0;
    negative means 0.2 (the April 2024 recipe), or 0 with --weight-average."""
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
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {self.arch!r}")
        # A batch's FVU (topk's loss, the divergence check) needs its centred variance.
        _at_least("batch_size", self.batch_size, 2, "a batch's FVU needs two rows or more")
        _at_least("k", self.k, 0, "0 means 32")
        _at_least("lr", self.lr, 0, "0 means the architecture's default")
        _at_least("tokens", self.tokens, 0, "0 means one epoch")
        _at_least("target_l0", self.target_l0, 0, "0: off")
        _at_least("grad_clip", self.grad_clip, 0, "0: off")
        _at_least("refit_decoder", self.refit_decoder, 0, "0: off")
        _at_least("dead_window", self.dead_window, 1, "tokens")
        _at_least("checkpoint_every", self.checkpoint_every, 1, "steps")
        _at_least("log_every", self.log_every, 1, "steps")
        _at_least("context", self.context, 2, "tokens")
        if not 0 <= self.warmup_fraction <= 1:
            raise ValueError(f"--warmup-fraction must be in [0, 1], got {self.warmup_fraction}")
        if self.decay_fraction > 1:
            raise ValueError(
                f"--decay-fraction must be in [0, 1] (negative: default), got {self.decay_fraction}"
            )
        if not 0 <= self.weight_average <= 1:
            raise ValueError(
                f"--weight-average must be in [0, 1] (0: off), got {self.weight_average}"
            )
        if self.weight_average and self.arch not in ("topk", "batchtopk"):
            raise ValueError(
                f"--weight-average applies to topk and batchtopk, whose sparsity k fixes; "
                f"{self.arch}'s is set on the last weights, which an average would not keep"
            )
        if self.refit_decoder and self.stream_model:
            raise ValueError(
                "--refit-decoder needs a second pass over the tokens trained on: train from a "
                "store (--acts), not --stream-model"
            )
        if self.outlier_multiple != 0 and self.outlier_multiple < 1:
            raise ValueError(
                f"--outlier-multiple must be 0 (keep all) or at least 1, got "
                f"{self.outlier_multiple}"
            )
        if self.decoder_init_power > 1:
            raise ValueError(
                f"--decoder-init-power is at most 1 (Σ itself), got {self.decoder_init_power}"
            )
        if self.k and self.arch not in ("topk", "batchtopk"):
            raise ValueError(
                f"k applies to topk and batchtopk; {self.arch} sets its sparsity with the "
                "coefficient or target_l0"
            )
        if self.target_l0 and self.arch not in ("relu", "jumprelu"):
            raise ValueError(
                f"--target-l0 applies to relu and jumprelu; {self.arch} sets L0 with --k"
            )
        if self.decoder_lr_multiple < 0:
            raise ValueError(
                "decoder_lr_multiple must not be negative (0: default), "
                f"got {self.decoder_lr_multiple}"
            )
        if self.decoder_init_power > 0 and self.arch not in ("topk", "batchtopk"):
            raise ValueError("decoder_init_power applies to topk and batchtopk")
        if self.b_enc_init_share > 1:
            raise ValueError(
                f"--b-enc-init-share is at most 1 (the whole cut), got {self.b_enc_init_share}"
            )
        if self.b_enc_init_share > 0 and self.arch not in ("topk", "batchtopk"):
            raise ValueError("--b-enc-init-share applies to topk and batchtopk")
        if not 0 <= self.adam_beta1 < 1:
            raise ValueError(f"adam_beta1 must be in [0, 1) (0: default), got {self.adam_beta1}")
        if self.divergence_fvu < 0:
            raise ValueError(f"divergence_fvu must be >= 0 (0: off), got {self.divergence_fvu}")
        if self.lr_warmup_fraction > 1:
            raise ValueError(f"lr_warmup_fraction is at most 1, got {self.lr_warmup_fraction}")
        if self.adam_basis not in ("", *ADAM_BASES):
            raise ValueError(f"adam_basis must be eigen or standard, got {self.adam_basis!r}")
        if self.idle_momentum not in ("", *IDLE_MOMENTA):
            raise ValueError(f"idle_momentum must be reset or keep, got {self.idle_momentum!r}")
        if self.b_dec_init not in ("", *B_DEC_INITS):
            raise ValueError(f"b_dec_init must be median or zero, got {self.b_dec_init!r}")
        if self.logger not in ("none", "wandb", "tensorboard"):
            raise ValueError(f"logger must be none, wandb or tensorboard, got {self.logger!r}")
        self.n_features(1)  # validates the features string

    def n_features(self, d_in: int) -> int:
        text = str(self.features).strip().lower()
        try:
            return int(float(text[:-1]) * d_in) if text.endswith("x") else int(text)
        except ValueError:
            raise ValueError(
                f"features must be a count (9216) or a multiple like 16x, got {self.features!r}"
            ) from None

    def with_defaults_resolved(self) -> TrainConfig:
        """This config with each architecture default written out as its value: what a
        checkpoint records, so that a resumed run keeps the defaults it started with even
        if a later version changes them."""
        return replace(self, **self.resolved_defaults())

    def resolved_defaults(self) -> dict:
        """{field: value} of the fields whose 0/negative/empty value means a default."""
        return {
            "k": self.k_value() if self.arch in ("topk", "batchtopk") else 0,
            "lr": self.lr_value(),
            "decoder_lr_multiple": self.decoder_lr_multiple_value(),
            "decoder_init_power": self.decoder_init_power_value(),
            "adam_basis": self.adam_basis_value(),
            "idle_momentum": self.idle_momentum_value(),
            "b_enc_init_share": self.b_enc_init_share_value(),
            "adam_beta1": self.adam_beta1_value(),
            "lr_warmup_fraction": self.lr_warmup_value(),
            "b_dec_init": self.b_dec_init_value(),
            "coefficient": self.coefficient_value(),
            "decay_fraction": self.decay_value(),
        }

    def k_value(self) -> int:
        return self.k or DEFAULT_K

    def lr_value(self) -> float:
        return self.lr or DEFAULTS[self.arch].lr

    def coefficient_value(self) -> float:
        return self.coefficient if self.coefficient >= 0 else DEFAULTS[self.arch].coefficient

    def decoder_lr_multiple_value(self) -> float:
        return self.decoder_lr_multiple or DEFAULTS[self.arch].decoder_lr_multiple

    def decoder_init_power_value(self) -> float:
        if self.decoder_init_power >= 0:
            return self.decoder_init_power
        return DEFAULTS[self.arch].decoder_init_power

    def adam_basis_value(self) -> str:
        return self.adam_basis or DEFAULTS[self.arch].adam_basis

    def idle_momentum_value(self) -> str:
        return self.idle_momentum or DEFAULTS[self.arch].idle_momentum

    def b_enc_init_share_value(self) -> float:
        if self.b_enc_init_share >= 0:
            return self.b_enc_init_share
        return DEFAULTS[self.arch].b_enc_init_share

    def adam_beta1_value(self) -> float:
        return self.adam_beta1 or DEFAULTS[self.arch].adam_beta1

    def b_dec_init_value(self) -> str:
        return self.b_dec_init or DEFAULTS[self.arch].b_dec_init

    def decay_value(self) -> float:
        if self.decay_fraction >= 0:
            return self.decay_fraction
        return 0.0 if self.weight_average else DEFAULT_DECAY_FRACTION

    def lr_warmup_value(self) -> float:
        if self.lr_warmup_fraction >= 0:
            return self.lr_warmup_fraction
        return DEFAULTS[self.arch].lr_warmup_fraction
