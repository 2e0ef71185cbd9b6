"""monoscope.train.basis: training in the eigenbasis of the input covariance."""

from __future__ import annotations

import copy

import pytest
import torch

from monoscope.sae import ARCHITECTURES, AUXK_COEFFICIENT, SAEConfig, build_sae
from monoscope.train.basis import covariance_eigenbasis, rotate_sae


def anisotropic(rows: int, d: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scales = torch.logspace(0, 2, d)
    return (
        torch.randn(rows, d, generator=g)
        * scales
        @ torch.linalg.qr(torch.randn(d, d, generator=g))[0]
        + 3.0
    )


def test_the_eigenbasis_is_orthogonal_and_diagonalises_the_covariance():
    x = anisotropic(4096)
    basis = covariance_eigenbasis(x)
    torch.testing.assert_close(basis.T @ basis, torch.eye(16), atol=1e-5, rtol=0)
    rotated = (x - x.mean(0)) @ basis
    covariance = rotated.T @ rotated / (x.shape[0] - 1)
    off_diagonal = covariance - torch.diag(covariance.diagonal())
    assert float(off_diagonal.abs().max()) < 1e-3 * float(covariance.diagonal().max())


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_a_rotated_sae_on_rotated_inputs_is_the_same_sae(arch):
    k = 4 if arch in ("topk", "batchtopk") else None
    cfg = SAEConfig(arch=arch, d_in=16, n_features=64, k=k, input_scale=0.05)
    sae = build_sae(cfg, seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    x = anisotropic(256)
    basis = covariance_eigenbasis(x)
    rotated = copy.deepcopy(sae)
    rotate_sae(rotated, basis)
    coefficient = AUXK_COEFFICIENT if k else 1e-3
    plain, turned = sae.training_step(x, coefficient), rotated.training_step(x @ basis, coefficient)
    torch.testing.assert_close(turned.loss, plain.loss, rtol=1e-4, atol=1e-6)
    assert torch.equal(turned.fired, plain.fired)
    rotate_sae(rotated, basis.T)
    for name, value in sae.state_dict().items():
        torch.testing.assert_close(rotated.state_dict()[name], value, rtol=1e-5, atol=1e-6)
