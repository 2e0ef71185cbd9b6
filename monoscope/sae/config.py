"""`SAEConfig`: what an SAE is (architecture, sizes, input scale) and where it came from.

Written to `config.json` next to the weights, so a loaded SAE reproduces the numbers it was
trained and evaluated with: the activation convention and whether `b_dec` is subtracted from
the encoder input are recorded, not implied by the code version that reads them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

SAE_FORMAT = "monoscope.sae"
SAE_FORMAT_VERSION = 1

INPUT_NORMS = ("none", "constant_norm_rescale", "layer_norm")
"""Per-token input normalisations (`SAEConfig.input_norm`; monoscope/sae/normalization.py)."""

COMPUTE_DTYPES = ("float32", "bfloat16")


@dataclass
class SAEConfig:
    arch: str
    """Architecture: relu, topk, batchtopk or jumprelu (or neurons, a fixed identity
    dictionary)."""
    d_in: int
    """Width of the activations the SAE reads."""
    n_features: int
    """Number of latents (dictionary size)."""
    k: int | None = None
    """Active latents per token (topk); mean active latents per token (batchtopk)."""
    input_scale: float = 1.0
    """Raw activations are multiplied by this before encoding and decode divides it out; the
    trainer sets it so that E||x * scale|| = sqrt(d_in) (Anthropic, April 2024 update)."""
    site: str | None = None
    """Site the SAE was trained on, e.g. blocks.15.hook_resid_post."""
    model: str | None = None
    """Model name (and revision) the SAE was trained on."""
    jumprelu_bandwidth: float = 0.001
    """Width of the rectangle kernel of the JumpReLU straight-through estimator."""
    jumprelu_init_threshold: float = 0.001
    """Initial JumpReLU threshold of every latent."""
    batchtopk_threshold: float | None = None
    """BatchTopK inference threshold θ (f = pre · (pre > θ)): the smallest activation the batch
    rule keeps over a sample of training rows, set when training ends."""
    activation_convention: str | None = None
    """How feature activations are reported: 'f*||W_dec_i||' (relu) or 'f' (the others);
    unset means the architecture's convention."""
    subtract_b_dec_in_encoder: bool | None = None
    """Encode x - b_dec instead of x (SAELens' apply_b_dec_to_input); unset means the
    architecture's default (topk, batchtopk: yes; relu, jumprelu: no)."""
    compute_dtype: str = "float32"
    """Precision of the training step's dense matmuls: 'float32', or 'bfloat16' (parameters,
    gradients and Adam stay float32; the dense products run in bfloat16)."""
    training: dict[str, Any] = field(default_factory=dict)
    """Free-form summary written by the trainer (tokens, steps, final metrics) or the importer."""
    input_norm: str = "none"
    """Per-token normalisation of each raw row before `input_scale` (SAELens'
    normalize_activations): 'none', 'constant_norm_rescale' (x sqrt(d_in) / ||x||) or
    'layer_norm' ((x - mean) / (std + 1e-5)); the SAE's forward maps its reconstruction back
    with the row's own statistics (normalization.py)."""
    skip_connection: bool = False
    """A linear skip term W_skip [d_in, d_in] on the raw rows, in raw units: the reconstruction
    gains x W_skip^T (sparsify's skip_connection, SAELens' skip transcoders)."""
    transcoder: bool = False
    """The SAE reads `site` and predicts the activations at `output_site` (a transcoder), instead
    of reconstructing the site it reads."""
    output_site: str | None = None
    """Where a transcoder's output belongs, e.g. blocks.3.hook_mlp_out; None for an SAE."""

    def __post_init__(self) -> None:
        from monoscope.sae.registry import ARCHITECTURES, SAE_CLASSES  # the classes import this

        cls = SAE_CLASSES.get(self.arch)
        if cls is None:
            raise ValueError(
                f"unknown SAE architecture {self.arch!r}; choose one of {', '.join(ARCHITECTURES)}"
            )
        for name in ("d_in", "n_features"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self._check_k(cls.uses_k)
        self._check_numbers()
        self._check_choices(cls.convention)
        if self.subtract_b_dec_in_encoder is None:
            self.subtract_b_dec_in_encoder = cls.subtracts_b_dec
        cls.check_config(self)

    def _check_k(self, uses_k: bool) -> None:
        if not uses_k:
            if self.k is not None:
                raise ValueError(
                    f"k is for topk and batchtopk only (and groupmax imports); leave it unset "
                    f"for {self.arch}"
                )
            return
        if self.k is None:
            raise ValueError(f"{self.arch} needs k, the number of active latents per token")
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k <= 0:
            raise ValueError(f"k must be a positive integer, got {self.k!r}")
        if self.k > self.n_features:
            raise ValueError(
                f"--k {self.k} is larger than the number of features {self.n_features}"
            )

    def _check_numbers(self) -> None:
        _positive("input_scale", self.input_scale)
        _positive("jumprelu_bandwidth", self.jumprelu_bandwidth)
        _positive("jumprelu_init_threshold", self.jumprelu_init_threshold)
        if self.batchtopk_threshold is not None and not (
            math.isfinite(self.batchtopk_threshold) and self.batchtopk_threshold >= 0
        ):
            raise ValueError(
                f"batchtopk_threshold must be a finite number >= 0, got {self.batchtopk_threshold}"
            )

    def _check_choices(self, convention: str) -> None:
        """The activation convention (filled in from the architecture's when unset), compute
        dtype and input normalisation."""
        if self.activation_convention is None:
            self.activation_convention = convention
        elif self.activation_convention != convention:
            raise ValueError(
                f"{self.arch} SAEs report activations as {convention!r}, "
                f"not {self.activation_convention!r}"
            )
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(
                f"compute_dtype must be one of {', '.join(COMPUTE_DTYPES)}, "
                f"got {self.compute_dtype!r}"
            )
        if self.input_norm not in INPUT_NORMS:
            raise ValueError(
                f"input_norm must be one of {', '.join(INPUT_NORMS)}, got {self.input_norm!r}"
            )

    def to_json(self) -> dict[str, Any]:
        return {"format": SAE_FORMAT, "version": SAE_FORMAT_VERSION, **asdict(self)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SAEConfig:
        d = dict(d)
        fmt, version = d.pop("format", SAE_FORMAT), d.pop("version", SAE_FORMAT_VERSION)
        if fmt != SAE_FORMAT:
            raise ValueError(f"not a monoscope SAE config: format is {fmt!r}, not {SAE_FORMAT!r}")
        if version != SAE_FORMAT_VERSION:
            raise ValueError(
                f"SAE config version {version}: this monoscope reads version {SAE_FORMAT_VERSION}"
            )
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown SAE config keys {unknown}; known keys are {sorted(known)}")
        missing = [name for name in ("arch", "d_in", "n_features") if name not in d]
        if missing:
            raise ValueError(f"SAE config lacks {missing}")
        return cls(**d)


def _positive(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
