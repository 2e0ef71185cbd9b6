"""Training in the eigenbasis of the input covariance.

An SAE's loss is unchanged when its inputs and its d_in-side parameters are rotated together
(x -> x Q, W_dec -> W_dec Q, W_enc -> Qᵀ W_enc, b_dec -> b_dec Q, Q orthogonal): row norms,
codes and the reconstruction error all stay the same. Adam is not rotation-invariant, though:
it scales each coordinate by its own gradient magnitude. In the eigenbasis of the data's
covariance (the input-side factor of K-FAC, whose eigenbasis EKFAC and SOAP run their diagonal
preconditioners in) those per-coordinate scales match the residual stream's very unequal
directions, and the same number of steps goes further (docs/LOG.md). The trainer rotates each
batch and rotates the SAE back before it is saved.

The leading directions are what matter: Q is the product of r Householder reflections that
turn the top r eigenvectors into the first coordinate axes (the other axes span the rest, in no
particular order). Q - I then has rank r, so a batch is rotated in place by two thin products,
x += (x V) M, instead of one d x d product into a new tensor: about half the time and no second
[batch, d] tensor, at the full eigenbasis's FVU within the seeds' spread (docs/LOG.md).
When 2r >= d the thin products would cost more than the full one: Q is then the whole
eigenbasis, applied as one product.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from monoscope.sae.base import covariance_eigh
from monoscope.sae.sharded import Trainable

EIGEN_DIRECTIONS = 128
"""Leading eigen-directions turned onto axes (all of them when d_in <= 2 x this)."""


@dataclass(frozen=True)
class Rotation:
    """Q = I + V M, orthogonal; V [d, r], M [r, d] (float32). Without M, V is Q [d, d]."""

    V: Tensor
    M: Tensor | None

    @classmethod
    def eigen(cls, sample: Tensor, rank: int | None = None) -> Rotation:
        """The rotation whose first min(rank, d) columns are the leading eigenvectors (up to
        sign, descending) of the covariance of `sample` [n >= 2, d]; rank defaults to
        EIGEN_DIRECTIONS."""
        rank = EIGEN_DIRECTIONS if rank is None else rank
        _, vectors = covariance_eigh(sample)
        d = vectors.shape[0]
        if 2 * rank >= d:
            return cls(vectors.flip(1).float().contiguous(), None)
        leading = vectors[:, -rank:].flip(1)
        reflectors, tau = torch.geqrf(leading)
        # Q from the reflectors, padded to d of them (tau 0: identity); then Q - I = V M.
        padded = torch.zeros(d, d, dtype=reflectors.dtype)
        padded[:, :rank] = reflectors
        q = torch.linalg.householder_product(padded, torch.cat([tau, tau.new_zeros(d - rank)]))
        v = reflectors.tril(-1) + torch.eye(d, rank, dtype=reflectors.dtype)
        m = torch.linalg.lstsq(v, q - torch.eye(d, dtype=q.dtype)).solution
        return cls(v.float().contiguous(), m.float().contiguous())

    def apply_(self, x: Tensor) -> Tensor:
        """x Q for rows x [n, d], written over x (as x += (x V) M) unless Q is the whole
        eigenbasis: the trainer's batch is its own, and a second [n, d] tensor a step costs
        memory and, mapped afresh each time, page faults."""
        return x @ self.V if self.M is None else x.addmm_(x @ self.V, self.M)

    def matrix(self) -> Tensor:
        """Q [d, d]."""
        if self.M is None:
            return self.V
        eye = torch.eye(self.V.shape[0], dtype=self.V.dtype, device=self.V.device)
        return torch.addmm(eye, self.V, self.M)

    def to(self, device: torch.device) -> Rotation:
        """This rotation with its factors on `device`."""
        return Rotation(self.V.to(device), None if self.M is None else self.M.to(device))

    def tensors(self) -> dict[str, Tensor]:
        return {"rotation.V": self.V} | ({} if self.M is None else {"rotation.M": self.M})

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor]) -> Rotation | None:
        if "rotation.V" not in tensors:
            return None
        return cls(tensors["rotation.V"], tensors.get("rotation.M"))


@torch.no_grad()
def rotate_sae(sae: Trainable, q: Tensor) -> None:
    """Express `sae` in the coordinates x' = x @ q, in place; `q.T` undoes it."""
    sae.W_dec.copy_(sae.W_dec @ q)
    sae.W_enc.copy_(q.T @ sae.W_enc)
    sae.b_dec.copy_(sae.b_dec @ q)
