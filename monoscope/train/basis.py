"""Training in the eigenbasis of the input covariance.

An SAE's loss is unchanged when its inputs and its d_in-side parameters are rotated together
(x -> x U, W_dec -> W_dec U, W_enc -> Uᵀ W_enc, b_dec -> b_dec U, U orthogonal): row norms,
codes and the reconstruction error all stay the same. Adam is not rotation-invariant, though:
it scales each coordinate by its own gradient magnitude. In the eigenbasis of the data's
covariance (the input-side factor of K-FAC, whose eigenbasis EKFAC and SOAP run their diagonal
preconditioners in) those per-coordinate scales match the residual stream's very unequal
directions, and the same number of steps goes further (docs/LOG.md, 2026-11-26, fourth
session). The trainer rotates each batch (one d x d matmul, ~4% of a 16x step) and rotates the
SAE back before it is saved.
"""

from __future__ import annotations

import torch

from monoscope.sae import SparseAutoencoder
from monoscope.sae.base import covariance_eigh


def covariance_eigenbasis(sample: torch.Tensor) -> torch.Tensor:
    """U [d, d], orthogonal, whose columns are the eigenvectors of the covariance of
    `sample` [n >= 2, d] (ascending eigenvalues; computed in float64, returned float32)."""
    return covariance_eigh(sample)[1].float().contiguous()


@torch.no_grad()
def rotate_sae(sae: SparseAutoencoder, basis: torch.Tensor) -> None:
    """Express `sae` in the coordinates x' = x @ basis, in place; `basis.T` undoes it."""
    sae.W_dec.copy_(sae.W_dec @ basis)
    sae.W_enc.copy_(basis.T @ sae.W_enc)
    sae.b_dec.copy_(sae.b_dec @ basis)
