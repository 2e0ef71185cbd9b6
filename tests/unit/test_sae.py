"""monoscope.sae: the four architectures, their training steps, and the sparse TopK kernels."""

from __future__ import annotations

import math
import re

import pytest
import torch

import monoscope.sae.base as base_module
from monoscope.sae import (
    ARCHITECTURES,
    AUXK_COEFFICIENT,
    SAEConfig,
    SparseAutoencoder,
    build_sae,
)
from monoscope.sae.jumprelu import jumprelu, step
from monoscope.sae.sparse import Pattern, batch_topk_indices, sampled_affine, sparse_decode

D, F, K = 16, 64, 4
COEFFICIENT = {"relu": 1e-2, "topk": AUXK_COEFFICIENT, "batchtopk": AUXK_COEFFICIENT}
COEFFICIENT["jumprelu"] = 1e-3


def config(arch: str, **overrides) -> SAEConfig:
    k = K if arch in ("topk", "batchtopk") else None
    return SAEConfig(**{"arch": arch, "d_in": D, "n_features": F, "k": k, **overrides})


def trained_like(arch: str, seed: int = 0, **overrides) -> SparseAutoencoder:
    """An SAE with every parameter perturbed away from its initial value (nonzero biases,
    uneven decoder norms, per-latent thresholds), so tests exercise every term."""
    sae = build_sae(config(arch, input_scale=0.7, **overrides), seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    if arch == "batchtopk":
        sae.cfg.batchtopk_threshold = 0.3
    return sae


def low_rank_data(n: int = 512, rank: int = 6, seed: int = 0) -> torch.Tensor:
    """Sparse combinations of a few directions, plus an offset: a dictionary exists."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(rank, D, generator=g)
    codes = torch.rand(n, rank, generator=g) * (torch.rand(n, rank, generator=g) < 0.3)
    return 3.0 * codes @ basis + torch.randn(D, generator=g)


# -- config -------------------------------------------------------------------------------
def test_config_defaults_per_architecture():
    assert config("relu").activation_convention == "f*||W_dec_i||"
    assert not config("relu").subtract_b_dec_in_encoder
    assert config("topk").activation_convention == "f"
    assert config("topk").subtract_b_dec_in_encoder
    assert config("batchtopk").subtract_b_dec_in_encoder
    assert not config("jumprelu").subtract_b_dec_in_encoder


def test_config_json_round_trip():
    cfg = config("batchtopk", site="blocks.3.hook_resid_post", batchtopk_threshold=0.25)
    cfg.training["steps"] = 10
    doc = cfg.to_json()
    assert doc["format"] == "monoscope.sae" and doc["version"] == 1
    assert SAEConfig.from_json(doc) == cfg


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"arch": "mystery"}, "unknown SAE architecture 'mystery'"),
        ({"arch": "topk", "k": 40000, "n_features": 9216}, "--k 40000 is larger than the number"),
        ({"arch": "topk", "k": None}, "topk needs k"),
        ({"arch": "relu", "k": 8}, "k is for topk and batchtopk only"),
        ({"d_in": 0}, "d_in must be a positive integer"),
        ({"n_features": -3}, "n_features must be a positive integer"),
        ({"input_scale": 0.0}, "input_scale must be a finite number > 0"),
        ({"activation_convention": "f"}, "relu SAEs report activations as"),
    ],
)
def test_config_rejects_bad_values(overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        SAEConfig(**{"arch": "relu", "d_in": D, "n_features": F, **overrides})


def test_config_k_error_names_both_numbers():
    with pytest.raises(ValueError) as err:
        SAEConfig("topk", 576, 9216, k=40000)
    assert str(err.value) == "--k 40000 is larger than the number of features 9216"


def test_config_from_json_rejects_unknown_keys_and_formats():
    doc = config("relu").to_json()
    with pytest.raises(ValueError, match="unknown SAE config keys"):
        SAEConfig.from_json({**doc, "l1": 3})
    with pytest.raises(ValueError, match="not a monoscope SAE config"):
        SAEConfig.from_json({**doc, "format": "other"})
    with pytest.raises(ValueError, match="version 7"):
        SAEConfig.from_json({**doc, "version": 7})


# -- every architecture --------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_shapes_and_reconstruction_is_decode_of_encode(arch):
    sae = trained_like(arch).eval()
    x = low_rank_data(32)
    f = sae.encode(x)
    assert f.shape == (32, F) and sae.decode(f).shape == (32, D)
    assert torch.equal(sae(x), sae.decode(sae.encode(x)))
    assert sae.encode(x.view(4, 8, D)).shape == (4, 8, F)  # leading dims pass through
    assert torch.allclose(sae(x.view(4, 8, D)).view(32, D), sae(x), atol=1e-6)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_training_reduces_the_loss(arch):
    torch.manual_seed(0)
    x = low_rank_data(512)
    sae = build_sae(config(arch, input_scale=D**0.5 / x.norm(dim=-1).mean().item()), seed=0)
    sae.init_b_dec(x)
    opt = torch.optim.Adam(sae.parameters(), lr=3e-3)
    dead = torch.arange(F) % 4 == 0  # exercise AuxK
    losses = []
    for _ in range(50):
        out = sae.training_step(x, COEFFICIENT[arch], dead)
        opt.zero_grad()
        out.loss.backward()
        sae.before_optimizer_step()
        opt.step()
        sae.after_optimizer_step()
        losses.append(out.loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) / 5 < 0.6 * losses[0], losses[::10]
    assert 0 < out.fvu.item() < 1 and out.l0.item() > 0 and out.fired.dtype == torch.bool
    assert out.mse.requires_grad is False and out.sparsity.requires_grad is False


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_train_step_metrics_are_consistent(arch):
    sae = trained_like(arch)
    x = low_rank_data(64)
    out = sae.training_step(x, COEFFICIENT[arch])
    x_norm = x * sae.cfg.input_scale
    # The reconstruction the step scored is the SAE's own, in the normalised space.
    with torch.no_grad():
        sae.train()  # batchtopk: the training rule
        x_hat = sae(x) * sae.cfg.input_scale
        f = sae.encode(x)
    err = (x_norm - x_hat).pow(2).sum(-1)
    assert torch.allclose(out.mse, err.mean(), rtol=1e-4)
    assert torch.allclose(out.fvu, err.sum() / (x_norm - x_norm.mean(0)).pow(2).sum(), rtol=1e-4)
    assert torch.allclose(out.l0, (f != 0).sum(-1).float().mean())
    assert torch.equal(out.fired, (f != 0).any(0))


def test_inputs_and_reconstructions_are_in_raw_units():
    # An exact dictionary (x = ReLU(x) - ReLU(-x)) reconstructs raw x whatever input_scale is.
    eye = torch.eye(D)
    for scale in (0.01, 1.0, 37.0):
        sae = build_sae(SAEConfig("relu", D, 2 * D, input_scale=scale))
        with torch.no_grad():
            sae.W_enc.copy_(torch.cat([eye, -eye], 1))
            sae.W_dec.copy_(torch.cat([eye, -eye], 0))
            sae.b_enc.zero_()
        x = low_rank_data(16)
        assert torch.allclose(sae(x), x, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_changing_input_scale_with_matching_weights_leaves_outputs_unchanged(arch):
    sae = trained_like(arch).eval()
    other = build_sae(config(arch, input_scale=3.0)).eval()
    r = other.cfg.input_scale / sae.cfg.input_scale
    with torch.no_grad():
        other.load_state_dict(sae.state_dict())
        other.W_enc.div_(r)
        other.W_dec.mul_(r)
        other.b_dec.mul_(r)
    other.cfg.batchtopk_threshold = sae.cfg.batchtopk_threshold
    x = low_rank_data(32)
    assert torch.allclose(other(x), sae(x), rtol=1e-4, atol=1e-5)
    if arch != "relu":  # relu reports f·||W_dec||, in normalised units by design
        assert torch.allclose(other.encode(x), sae.encode(x), rtol=1e-4, atol=1e-5)


# -- relu -----------------------------------------------------------------------------------
def test_relu_init_follows_the_april_update():
    sae = build_sae(config("relu"), seed=3)
    assert torch.allclose(sae.W_dec.norm(dim=-1), torch.full((F,), 0.1))
    assert torch.equal(sae.W_enc, sae.W_dec.t())
    assert not sae.b_enc.any() and not sae.b_dec.any()


def test_relu_reports_f_times_decoder_norm_and_is_invariant_to_row_rescaling():
    sae = trained_like("relu")
    x = low_rank_data(64)
    pre = (x * sae.cfg.input_scale) @ sae.W_enc + sae.b_enc
    assert torch.allclose(sae.encode(x), torch.relu(pre) * sae.W_dec.norm(dim=-1), atol=1e-6)
    before = sae.training_step(x, 0.1)
    f_before = sae.encode(x)
    c = torch.linspace(0.2, 5.0, F)  # row i of W_dec times c_i, encoder column and bias / c_i
    with torch.no_grad():
        sae.W_dec.mul_(c[:, None])
        sae.W_enc.div_(c)
        sae.b_enc.div_(c)
    after = sae.training_step(x, 0.1)
    assert torch.allclose(after.loss, before.loss, rtol=1e-5)
    assert torch.allclose(after.sparsity, before.sparsity, rtol=1e-5)
    assert torch.allclose(sae.encode(x), f_before, rtol=1e-5, atol=1e-6)


# -- topk and batchtopk -----------------------------------------------------------------------
def test_topk_keeps_exactly_k_latents():
    sae = trained_like("topk")
    with torch.no_grad():
        sae.b_enc.fill_(50.0)  # every pre-activation positive: ReLU removes none
    x = low_rank_data(64)
    assert sae.training_step(x, AUXK_COEFFICIENT).l0.item() == K
    assert ((sae.encode(x) != 0).sum(-1) == K).all()


def test_batchtopk_keeps_k_per_token_on_average_and_calibrates_its_threshold():
    sae = trained_like("batchtopk")
    sae.cfg.batchtopk_threshold = None
    with pytest.raises(RuntimeError, match="no inference threshold yet"):
        sae.eval().encode(low_rank_data(4))
    sae.train()
    with torch.no_grad():
        sae.b_enc.fill_(50.0)
    x = low_rank_data(64)
    out = sae.training_step(x, AUXK_COEFFICIENT)
    assert out.l0.item() == K
    kept = sae.encode(x)
    counts = (kept != 0).sum(-1)
    assert counts.sum() == 64 * K and counts.max() > counts.min()  # a shared budget
    assert sae.cfg.batchtopk_threshold is None  # training does not set it
    # The threshold is the smallest activation the batch rule keeps over the sample, so
    # inference keeps the same latents of that sample (k per row on average).
    threshold = sae.calibrate_threshold(x)
    assert threshold == kept[kept > 0].min().item() == sae.cfg.batchtopk_threshold
    sae.eval()
    pre = sae.pre_activations(x)
    assert torch.equal(sae.encode(x), pre * (pre > threshold))
    assert int((sae.encode(x) != 0).sum()) == 64 * K - 1  # all but θ's own entry (pre > θ)
    with pytest.raises(ValueError, match="needs a sample"):
        sae.calibrate_threshold(x[:0])


def test_unit_norm_decoder_is_maintained():
    sae = build_sae(config("topk"))
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    x = low_rank_data(128)
    for _ in range(3):
        out = sae.training_step(x, AUXK_COEFFICIENT, torch.arange(F) < 20)
        opt.zero_grad()
        out.loss.backward()
        sae.before_optimizer_step()
        along = (sae.W_dec.grad * sae.W_dec).sum(-1)
        assert along.abs().max() < 1e-6  # no gradient along the rows
        opt.step()
        sae.after_optimizer_step()
        assert torch.allclose(sae.W_dec.norm(dim=-1), torch.ones(F), atol=1e-6)


def test_init_b_dec_is_the_geometric_median():
    g = torch.Generator().manual_seed(0)
    centre = torch.randn(D, generator=g)
    cloud = centre + 0.1 * torch.randn(200, D, generator=g)
    outliers = centre + 100.0 * torch.randn(20, D, generator=g)
    sample = torch.cat([cloud, outliers])
    sae = build_sae(config("topk", input_scale=2.0))
    sae.init_b_dec(sample)
    assert (sae.b_dec / 2.0 - centre).norm() < 0.1  # normalised space
    assert (sample.mean(0) - centre).norm() > 1.0  # the mean is dragged away


def anisotropic_start(arch: str, rows: int) -> tuple[SparseAutoencoder, torch.Tensor]:
    """A tied SAE with b_dec at the median of an anisotropic, off-centre sample [rows, D]."""
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(rows, D, generator=g) @ torch.randn(D, D, generator=g) + 3.0
    sae = build_sae(config(arch, input_scale=0.5), seed=0)
    sae.init_b_dec(sample)
    return sae, sample


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_init_encoder_scale_fits_the_reconstruction_scale(arch):
    sae, sample = anisotropic_start(arch, 300)
    W_dec = sae.W_dec.detach().clone()

    def error(scale: float) -> float:
        with torch.no_grad():
            sae.W_enc.copy_(W_dec.t() * scale)
            return (sae(sample) - sample).pow(2).sum().item()

    with torch.no_grad():
        sae.W_enc.copy_(W_dec.t())
    # topk: several passes give one sum; batchtopk chooses per pass, so one pass as error's.
    factor = sae.init_encoder_scale(sample, rows_per_pass=64 if arch == "topk" else 300)
    assert 0 < factor < 1  # the transposed decoder overshoots
    assert torch.allclose(sae.W_enc, W_dec.t() * factor)
    best = error(factor)
    assert best < error(factor * 0.95) and best < error(factor * 1.05) and best < error(1.0)


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_start_below_firing_cuts_lowers_each_bias_by_a_share_of_its_cut(arch):
    sae, sample = anisotropic_start(arch, 400)
    sae.init_encoder_scale(sample)
    W_enc = sae.W_enc.detach().clone()
    cuts = sae.firing_cuts(sample, sae.cfg.k)
    assert (cuts > 0).all()  # a tied start: every latent's top tokens align with it
    factor = sae.start_below_firing_cuts(sample, 0.25)
    assert factor > 0
    assert torch.allclose(sae.W_enc, W_enc * factor)
    assert torch.allclose(sae.b_enc, -0.25 * cuts * factor, atol=1e-5)
    # The scale is then the least-squares one: fitting again leaves it where it is.
    assert sae.least_squares_scale(sample, rows_per_pass=400) == pytest.approx(1.0, abs=1e-4)
    # A share of 0 is Gao et al.'s start: nothing moves.
    again = build_sae(config(arch, input_scale=0.5), seed=0)
    before = [p.detach().clone() for p in again.parameters()]
    assert again.start_below_firing_cuts(sample, 0.0) == 1.0
    assert all(torch.equal(a, b) for a, b in zip(before, again.parameters(), strict=True))


@pytest.mark.parametrize(
    ("arch", "dtype"),
    [("topk", "float32"), ("topk", "bfloat16"), ("batchtopk", "float32"), ("relu", "float32")],
)
def test_sparse_codes_are_the_nonzeros_of_encode(arch, dtype, monkeypatch):
    # The dense architectures' codes a block of rows at a time: 300 rows in blocks of 23.
    monkeypatch.setattr(base_module, "DENSE_CODE_BYTES", 23 * 64 * 4)
    sae = build_sae(config(arch, input_scale=0.5, compute_dtype=dtype), seed=0)
    if arch == "batchtopk":
        sae.cfg.batchtopk_threshold = 0.5  # inference: a varying number of codes per row
    x = torch.randn(300, D, generator=torch.Generator().manual_seed(1)) * 3
    sae.eval()
    with torch.no_grad():
        codes = sae.decoder_codes(x)
        pattern, values = sae.sparse_codes(x)
    assert (pattern.n_rows, pattern.n_cols) == codes.shape and values.shape == (pattern.nnz,)
    if arch == "relu":  # exactly the nonzeros, whose number varies from row to row
        assert pattern.nnz == torch.count_nonzero(codes)
        assert pattern.crow.diff().unique().numel() > 1
    rebuilt = pattern.dense(values)
    if dtype == "float32":
        torch.testing.assert_close(rebuilt, codes)
    else:  # chosen by bfloat16 scores, as in training: the values are exact for that choice
        chosen = rebuilt > 0
        assert (chosen.sum(1) <= K).all()
        torch.testing.assert_close(rebuilt[chosen], torch.relu(sae.pre_activations(x))[chosen])


def test_shape_decoder_directions_leans_the_rows_toward_the_data_variance():
    g = torch.Generator().manual_seed(0)
    spread = torch.ones(D)
    spread[0] = 30.0  # one axis carries most of the variance
    sample = torch.randn(500, D, generator=g) * spread + 5.0
    sae = build_sae(config("topk", input_scale=0.5), seed=0)
    before = sae.W_dec.detach().clone()
    sae.shape_decoder_directions(sample, 0.25)
    rows = sae.W_dec.detach()
    assert torch.allclose(rows.norm(dim=-1), torch.ones(F), atol=1e-5)
    assert torch.equal(sae.W_enc, rows.t())
    # Isotropic rows put 1/D of their energy on each axis; Σ^(1/4) scales axis 0 by ~30^(1/2).
    assert before[:, 0].pow(2).mean() < 2.0 / D
    assert rows[:, 0].pow(2).mean() > 5.0 / D
    # Power 0 maps through the identity.
    again = build_sae(config("topk", input_scale=0.5), seed=0)
    again.shape_decoder_directions(sample, 0.0)
    assert torch.allclose(again.W_dec, before, atol=1e-6)
    with pytest.raises(ValueError, match="2 rows"):
        again.shape_decoder_directions(sample[:1], 0.25)


# -- jumprelu ---------------------------------------------------------------------------------
def test_jumprelu_init_and_encode():
    sae = build_sae(config("jumprelu", jumprelu_init_threshold=0.05))
    assert torch.allclose(sae.threshold, torch.full((F,), 0.05))
    assert torch.allclose(sae.W_dec.norm(dim=-1), torch.ones(F))
    x = low_rank_data(16)
    pre = sae.pre_activations(x)
    assert torch.equal(sae.encode(x), pre * (pre > 0.05))


def test_jumprelu_straight_through_gradients():
    eps = 0.1
    pre = torch.tensor([[0.95, 1.02, 2.0], [1.3, 0.5, 1.98]], requires_grad=True)
    theta = torch.tensor([1.0, 1.0, 2.0], requires_grad=True)
    grad = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    jumprelu(pre, theta, eps).backward(grad)
    in_window = ((pre - theta).abs() < eps / 2).float()
    assert torch.equal(pre.grad, grad * (pre > theta))
    assert torch.allclose(theta.grad, (-(theta / eps) * in_window * grad).sum(0))
    theta.grad = None
    step(pre, theta, eps).sum(-1).mean().backward()
    assert torch.allclose(theta.grad, (-(1 / eps) * in_window * 0.5).sum(0))


# -- sparse kernels ----------------------------------------------------------------------------
def _random_pattern(rows: int, cols: int, k: int, seed: int = 0) -> Pattern:
    g = torch.Generator().manual_seed(seed)
    return Pattern.from_row_indices(torch.rand(rows, cols, generator=g).topk(k).indices, cols)


def test_sparse_functions_pass_gradcheck():
    g = torch.Generator().manual_seed(0)
    p = _random_pattern(5, 9, 3)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)

    x, W, b, W_dec, values = rand(5, 4), rand(4, 9), rand(9), rand(9, 4), rand(p.nnz)
    assert torch.autograd.gradcheck(lambda x, W, b: sampled_affine(x, W, b, p), (x, W, b))
    assert torch.autograd.gradcheck(lambda v, Wd: sparse_decode(v, Wd, p), (values, W_dec))
    # A transposed (non-contiguous) weight, and a pattern with uneven rows.
    flat = torch.tensor([0, 3, 4, 5, 6, 7, 8, 40, 44])
    uneven = Pattern.from_flat_indices(flat, 5, 9)
    assert torch.autograd.gradcheck(lambda x, Wd: sampled_affine(x, Wd.t(), b, uneven), (x, W_dec))
    assert torch.equal(uneven.crow, torch.tensor([0, 7, 7, 7, 7, 9]))


def test_sampled_affine_matches_the_dense_product():
    p = _random_pattern(6, 20, 4)
    x, W, b = torch.randn(6, 5), torch.randn(5, 20), torch.randn(20)
    dense = x @ W + b
    assert torch.allclose(sampled_affine(x, W, b, p), dense[p.row, p.col], atol=1e-6)
    # Entries computed while choosing the pattern are returned as they are.
    assert torch.equal(sampled_affine(x, W, b, p, dense[p.row, p.col]), dense[p.row, p.col])
    values = torch.randn(p.nnz)
    W_dec = torch.randn(20, 5)
    assert torch.allclose(sparse_decode(values, W_dec, p), p.dense(values) @ W_dec, atol=1e-6)


def test_batch_topk_indices_are_the_global_top():
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(32, 100, generator=g)
    for n in (1, 32, 100, 3000):
        expected = set(scores.flatten().topk(n).indices.tolist())
        assert set(batch_topk_indices(scores, n).tolist()) == expected
    scores[3] += 10.0  # one row holds more than the candidate budget: the exact fallback
    expected = set(scores.flatten().topk(200).indices.tolist())
    assert set(batch_topk_indices(scores, 200).tolist()) == expected


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_sparse_training_step_saves_no_dense_batch_by_features_tensor(arch):
    d, n, batch = 32, 512, 64
    sae = build_sae(SAEConfig(arch, d, n, k=8), seed=0)
    saved = []

    def pack(t):
        saved.append((t.layout, tuple(t.shape)))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = sae.training_step(torch.randn(batch, d), AUXK_COEFFICIENT, torch.rand(n) < 0.5)
    out.loss.backward()
    assert saved and all(math.prod(shape) < batch * n for _, shape in saved), saved


def test_the_architectures_are_listed_once_and_declare_their_training():
    from dataclasses import fields

    from monoscope.sae import SAE_CLASSES, registry
    from monoscope.sae import config as config_module
    from monoscope.sae.training import SPARSITY_K, SPARSITY_PENALTY, SampleStart, TrainingDefaults

    assert {cls.arch: cls for cls in (*registry.TRAINED, *registry.FIXED)} == SAE_CLASSES
    assert ARCHITECTURES == registry.ARCHITECTURES == tuple(c.arch for c in registry.TRAINED)
    assert not hasattr(config_module, "ARCHITECTURES")  # SAEConfig reads the registry
    readable = {f.name for f in fields(SampleStart)}
    for cls in registry.TRAINED:
        assert isinstance(cls.training_defaults, TrainingDefaults), cls.arch
        assert cls.sparsity in (SPARSITY_K, SPARSITY_PENALTY), cls.arch
        assert set(cls.start_settings) <= readable, cls.arch
        # A k-sparse architecture has a default k; a penalised one has none.
        assert (cls.training_defaults.k is None) == (cls.sparsity == SPARSITY_PENALTY), cls.arch
        build_sae(config(cls.arch))  # every listed architecture builds
    with pytest.raises(ValueError, match="arch must be one of relu, topk, batchtopk, jumprelu"):
        registry.trained_class("neurons")  # a fixed dictionary is not trained


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_each_architecture_starts_from_a_sample_as_it_declares(arch):
    from monoscope.sae.training import SampleStart

    gen = torch.Generator().manual_seed(0)
    sample = torch.randn(512, D, generator=gen) * 3 + 1
    plain = build_sae(config(arch), seed=0)
    started = build_sae(config(arch), seed=0)
    settings = {"decoder_init_power": 0.125, "b_enc_init_share": 0.25, "target_l0": 6.0}
    chosen = {name: settings[name] for name in type(started).start_settings}
    started.start_from_sample(sample, SampleStart(**chosen))
    moved = [n for n, p in started.named_parameters() if not torch.equal(p, plain.get_parameter(n))]
    # topk/batchtopk: b_enc below the cuts and the encoder's scale; relu/jumprelu: the L0 start.
    assert "b_enc" in moved or "log_threshold" in moved, arch
    unstarted = build_sae(config(arch), seed=0)
    unstarted.start_from_sample(sample, SampleStart())  # every setting at 0
    if started.sparsity == "penalty":  # without a target L0 nothing moves
        assert all(torch.equal(p, plain.get_parameter(n)) for n, p in unstarted.named_parameters())
