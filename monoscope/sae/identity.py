"""`NeuronDictionary`: a layer's neurons read as a dictionary of features (arch 'neurons').

An identity "SAE" over a site such as blocks.L.mlp.hook_post, so that the stages written for
SAEs (analyze, explain, score, specificity) run on neurons unchanged (Scaling Monosemanticity's
features-vs-neurons comparison, METHODS.md §5.3).

Signs. The feature store's convention is that a feature fires where its activation is > 0 and
its examples are its largest activations. A gated MLP's hidden unit SiLU(gate)·up is signed, and
about half of its values on a token are negative (the up projection's sign is arbitrary), so the
dictionary reports:
- 'positive' (n_features = d_in): feature i = max(x_i, 0), the neuron's positive side; the
  features are the neurons one to one, as the paper's "random neurons" are sampled;
- 'both' (n_features = 2·d_in): feature i = max(x_i, 0) and feature d_in + i = max(-x_i, 0),
  each sign a feature of its own; decode then reconstructs x exactly.
The signs are fixed by n_features, so the saved folder (config.json + weights.safetensors)
describes itself.
"""

from __future__ import annotations

import torch
from torch import Tensor

from monoscope.sae.base import SparseAutoencoder, TrainStep
from monoscope.sae.config import SAEConfig
from monoscope.sae.files import SAEFormatError

SIGNS = ("positive", "both")


def neuron_config(
    width: int, signs: str = "positive", site: str | None = None, **extra
) -> SAEConfig:
    """The SAEConfig of a neurons dictionary over a site of `width` units."""
    if signs not in SIGNS:
        raise ValueError(f"signs must be one of {', '.join(SIGNS)}, got {signs!r}")
    n = width if signs == "positive" else 2 * width
    return SAEConfig(arch="neurons", d_in=width, n_features=n, site=site, **extra)


class NeuronDictionary(SparseAutoencoder):
    """W_enc = [I | -I] [d_in, n_features] (only I for 'positive'), W_dec its transpose, biases 0;
    encode(x) = relu(x @ W_enc), computed without the matmul."""

    arch = "neurons"

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__(cfg)
        if cfg.n_features not in (cfg.d_in, 2 * cfg.d_in) or cfg.input_scale != 1.0:
            raise ValueError(
                f"a neurons dictionary has n_features d_in ({cfg.d_in}, the positive side) or "
                f"2·d_in (both signs) and input_scale 1; got n_features {cfg.n_features}, "
                f"input_scale {cfg.input_scale}"
            )
        self.reset_parameters(torch.Generator())

    @property
    def signs(self) -> str:
        return "positive" if self.cfg.n_features == self.cfg.d_in else "both"

    def _identity(self) -> Tensor:
        """W_dec's fixed value [n_features, d_in]."""
        eye = torch.eye(self.cfg.d_in)
        return eye if self.signs == "positive" else torch.cat([eye, -eye])

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator) -> None:
        """The identity (the generator is unused: nothing is random)."""
        W_dec = self._identity().to(self.W_dec)
        self.W_dec.copy_(W_dec)
        self.W_enc.copy_(W_dec.t())
        self.b_enc.zero_()
        self.b_dec.zero_()

    def encode(self, x: Tensor) -> Tensor:
        """Raw x [..., d_in] -> [..., n_features]: relu(x), then relu(-x) for 'both'."""
        x = self.normalise(x)
        if self.signs == "positive":
            return torch.relu(x)
        return torch.cat([torch.relu(x), torch.relu(-x)], dim=-1)

    @torch.no_grad()
    def load_weights(self, tensors: dict[str, Tensor], source: str) -> None:
        """As for any SAE, and the weights must be the identity: `encode` relies on it."""
        super().load_weights(tensors, source)
        expected = self._identity().to(self.W_dec)
        fixed = torch.equal(self.W_dec, expected) and torch.equal(self.W_enc, expected.t())
        if not fixed or self.b_enc.any() or self.b_dec.any():
            raise SAEFormatError(
                f"{source}: a neurons dictionary's weights are the identity (W_enc = [I | -I], "
                "W_dec its transpose, biases 0); these are not"
            )

    def training_step(
        self, x: Tensor, coefficient: float, dead_mask: Tensor | None = None
    ) -> TrainStep:
        raise ValueError("a neurons dictionary is fixed: there is nothing to train")
