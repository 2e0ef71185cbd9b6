"""monoscope.train.basis: training in the eigenbasis of the input covariance."""

from __future__ import annotations

import copy

import pytest
import torch

from monoscope.sae import ARCHITECTURES, AUXK_COEFFICIENT, SAEConfig, build_sae
from monoscope.sae.base import covariance_eigh
from monoscope.train.basis import Rotation, rotate_sae


def anisotropic(rows: int, d: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scales = torch.logspace(0, 2, d)
    return (
        torch.randn(rows, d, generator=g)
        * scales
        @ torch.linalg.qr(torch.randn(d, d, generator=g))[0]
        + 3.0
    )


@pytest.mark.parametrize("rank", [4, 8])
def test_the_rotation_is_orthogonal_and_leads_with_the_top_eigenvectors(rank):
    x = anisotropic(4096)
    rotation = Rotation.eigen(x, rank)
    q = rotation.matrix()
    torch.testing.assert_close(q.T @ q, torch.eye(16), atol=1e-5, rtol=0)
    batch = x.clone()
    turned = rotation.apply_(batch)
    torch.testing.assert_close(turned, x @ q, atol=1e-4, rtol=1e-5)
    # The low-rank path rotates the batch in place: no second [n, d] tensor.
    assert (turned.data_ptr() == batch.data_ptr()) == (rotation.M is not None)
    if 2 * rank < 16:  # rotating a batch costs two [d, rank] products
        assert rotation.V.shape == (16, rank) and rotation.M.shape == (rank, 16)
    else:  # ... unless one [d, d] product is cheaper: then Q is the whole eigenbasis
        assert rotation.M is None and rotation.V.shape == (16, 16)
    # Its first axes are the leading eigen-directions (up to sign): the rotated covariance
    # is diagonal there, in descending order.
    rotated = (x - x.mean(0)) @ q
    covariance = rotated.T @ rotated / (x.shape[0] - 1)
    lead = covariance[:rank, :rank]
    assert float((lead - torch.diag(lead.diagonal())).abs().max()) < 1e-3 * float(lead.max())
    eigenvalues, _ = covariance_eigh(x)
    torch.testing.assert_close(
        lead.diagonal().double(), eigenvalues.flip(0)[:rank], rtol=1e-3, atol=0
    )
    saved = Rotation.from_tensors(rotation.tensors())
    assert torch.equal(saved.matrix(), q)
    assert Rotation.from_tensors({}) is None


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
    basis = Rotation.eigen(x, 8).matrix()
    rotated = copy.deepcopy(sae)
    rotate_sae(rotated, basis)
    coefficient = AUXK_COEFFICIENT if k else 1e-3
    plain, turned = sae.training_step(x, coefficient), rotated.training_step(x @ basis, coefficient)
    torch.testing.assert_close(turned.loss, plain.loss, rtol=1e-4, atol=1e-6)
    assert torch.equal(turned.fired, plain.fired)
    rotate_sae(rotated, basis.T)
    for name, value in sae.state_dict().items():
        torch.testing.assert_close(rotated.state_dict()[name], value, rtol=1e-5, atol=1e-6)
