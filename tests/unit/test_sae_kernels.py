"""The training kernels behind the SAEs' steps: blocked top-k, the chunked latent selection,
the sparse products with their shift/scale gradients, the fused ReLU step, bfloat16 steps."""

from __future__ import annotations

import json
import math

import pytest
import torch

from monoscope.sae import SAEConfig, build_sae
from monoscope.sae import relu as relu_module
from monoscope.sae.sparse import (
    DeferredGradient,
    Pattern,
    merge_groups,
    sampled_affine,
    sparse_decode,
    sparse_error,
    top_groups,
    topk_blocks,
    topk_rows,
)
from monoscope.sae.step_memory import StepMemory
from monoscope.sae.topk import TopKFamilySAE
from monoscope.train.step import apply_gradients


def dense_topk_reference(sae, x, coefficient, dead_mask):
    """TopK / BatchTopK training loss with plain dense autograd: the definition."""
    x_norm = x * sae.cfg.input_scale
    pre = (x_norm - sae.b_dec) @ sae.W_enc + sae.b_enc
    if sae.cfg.arch == "topk":
        keep = torch.zeros_like(pre, dtype=torch.bool)
        keep.scatter_(-1, pre.topk(sae.cfg.k, dim=-1).indices, True)
    else:
        flat = pre.flatten().topk(pre.shape[0] * sae.cfg.k).indices
        keep = torch.zeros(pre.numel(), dtype=torch.bool).index_fill_(0, flat, True)
        keep = keep.view_as(pre)
    z = torch.relu(pre) * keep
    x_hat = z @ sae.W_dec + sae.b_dec
    fvu = (x_norm - x_hat).pow(2).sum() / (x_norm - x_norm.mean(0)).pow(2).sum()
    if not dead_mask.any():
        return fvu
    residual = (x_norm - x_hat).detach()
    k_aux = min(sae.cfg.d_in // 2, int(dead_mask.sum()))
    masked = pre.masked_fill(~dead_mask, -math.inf)
    aux_keep = torch.zeros_like(pre, dtype=torch.bool)
    aux_keep.scatter_(-1, masked.topk(k_aux, dim=-1).indices, True)
    residual_hat = (torch.relu(pre) * aux_keep) @ sae.W_dec
    aux = (residual - residual_hat).pow(2).sum() / (residual - residual.mean(0)).pow(2).sum()
    return fvu + coefficient * aux


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_sparse_training_step_has_the_dense_gradients(arch):
    torch.manual_seed(0)
    d, n, k, batch = 32, 512, 8, 64
    sae = build_sae(SAEConfig(arch, d, n, k=k, input_scale=0.5), seed=1)
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_(std=0.1)
    assert_dense_loss_and_gradients(sae, torch.randn(batch, d) * 2.0, torch.rand(n) < 0.2)


def assert_dense_loss_and_gradients(sae, x, dead):
    """The SAE's training step has `dense_topk_reference`'s loss and gradients."""
    out = sae.training_step(x, 0.25, dead)
    out.loss.backward()
    grads = {name: p.grad.clone() for name, p in sae.named_parameters()}
    sae.zero_grad()
    reference = dense_topk_reference(sae, x, 0.25, dead)
    reference.backward()
    assert torch.allclose(out.loss, reference, rtol=1e-5)
    for name, p in sae.named_parameters():
        assert torch.allclose(grads[name], p.grad, rtol=1e-4, atol=1e-6), name


def _blocks(nb: int, rows: int, w: int, seed: int = 0, spare_rows: int = 3) -> torch.Tensor:
    """[nb, rows, w] column blocks whose blocks are further apart than rows * w (a view)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(nb, rows + spare_rows, w, generator=g)[:, :rows]


def _as_rows(blocks: torch.Tensor) -> torch.Tensor:
    nb, rows, w = blocks.shape
    return blocks.permute(1, 0, 2).reshape(rows, nb * w)


# -- blocked top-k ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("nb", "rows", "w", "k"),
    [(8, 64, 96, 4), (4, 33, 96, 8), (1, 17, 768, 5), (2, 9, 40, 3), (3, 5, 64, 64), (2, 7, 8, 16)],
)
def test_topk_blocks_are_the_rows_top_k(nb, rows, w, k):
    blocks = _blocks(nb, rows, w)
    whole = _as_rows(blocks)
    values, columns = topk_blocks(blocks, k)
    expected = whole.topk(k, dim=-1).values
    assert torch.equal(values.sort(-1, descending=True).values, expected)
    assert torch.equal(whole.gather(1, columns), values)  # the columns hold those values
    assert (columns.sort(-1).values.diff(dim=-1) > 0).all()  # no column twice


def test_topk_rows_with_ties_and_infinities():
    g = torch.Generator().manual_seed(1)
    scores = torch.randint(0, 5, (40, 1024), generator=g).float()  # many ties
    scores[3, 100:110] = math.inf
    scores[4] = -math.inf
    values, columns = topk_rows(scores, 12)
    assert torch.equal(values.sort(-1, descending=True).values, scores.topk(12, dim=-1).values)
    assert torch.equal(scores.gather(1, columns), values)
    assert (columns.sort(-1).values.diff(dim=-1) > 0).all()


def test_groups_of_column_parts_merge_to_the_rows_top_k():
    blocks = _blocks(6, 50, 128, seed=2)
    whole = _as_rows(blocks)
    for k in (3, 16):
        parts = [top_groups(blocks[i : i + 2], k, i * 128, 6 * 128) for i in (0, 2, 4)]
        values, columns = merge_groups(parts, k).finish(k)
        assert torch.equal(values.sort(-1, descending=True).values, whole.topk(k).values)
        assert torch.equal(whole.gather(1, columns), values)


# -- patterns and sparse products --------------------------------------------------------------
def test_pattern_constructors_keep_values_with_their_entries():
    g = torch.Generator().manual_seed(0)
    rows, cols = 6, 30
    dense = torch.randn(rows, cols, generator=g)
    indices = torch.rand(rows, cols, generator=g).topk(4).indices  # unsorted within rows
    pattern, values = Pattern.from_rows(indices, dense.gather(1, indices), cols)
    assert torch.equal(values, dense[pattern.row, pattern.col])
    assert (pattern.col.view(rows, 4).diff(dim=-1) > 0).all()
    flat = torch.tensor([29, 0, 61, 33, 175, 90])
    pattern, values = Pattern.from_flat(flat, flat.float(), rows, cols)
    assert torch.equal(values, (pattern.row * cols + pattern.col).float())


def test_transposed_products_match_the_dense_ones():
    g = torch.Generator().manual_seed(0)
    rows, cols, d = 40, 1300, 6  # more columns than a block of the transposed product
    pattern = Pattern.from_rows(
        torch.rand(rows, cols, generator=g).topk(7).indices, torch.zeros(rows, 7), cols
    )[0]
    values, dense = torch.randn(pattern.nnz, generator=g), torch.randn(rows, d, generator=g)
    matrix = pattern.dense(values)
    u, v = torch.randn(d, generator=g), torch.randn(cols, generator=g)
    torch.testing.assert_close(pattern.transposed_product(values, dense), matrix.t() @ dense)
    start = torch.randn(cols, d, generator=g)
    torch.testing.assert_close(
        pattern.transposed_product(values, dense, out=start.clone(), accumulate=True),
        start + matrix.t() @ dense,
    )
    with pytest.raises(ValueError, match="accumulate needs an `out`"):
        pattern.transposed_product(values, dense, accumulate=True)
    torch.testing.assert_close(
        pattern.transposed_product_t(values, dense, minus_outer=(u, v)),
        dense.t() @ matrix - torch.outer(u, v),
    )
    out = torch.zeros(rows, d)
    torch.testing.assert_close(
        pattern.subtract_product(values, torch.randn(cols, d).mul(0) + 1, out),
        -matrix.sum(1, keepdim=True).expand(rows, d),
    )


def test_shifted_scaled_sparse_functions_pass_gradcheck():
    g = torch.Generator().manual_seed(0)
    pattern = Pattern.from_rows(
        torch.rand(5, 9, generator=g).topk(3).indices, torch.zeros(5, 3), 9
    )[0]

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)

    x, W, b, shift = rand(5, 4), rand(4, 9), rand(9), rand(4)
    values, W_dec, target, offset = rand(pattern.nnz), rand(9, 4), rand(5, 4), rand(4)
    assert torch.autograd.gradcheck(
        lambda x, W, b, s: sampled_affine(x, W, b, pattern, shift=s, scale=0.7), (x, W, b, shift)
    )
    assert torch.autograd.gradcheck(
        lambda v, Wd, t, o: sparse_error(v, Wd, pattern, t, o, scale=1.3)[0],
        (values, W_dec, target, offset),
    )
    # The forward values are the definition, and `out` only says where the residual goes.
    with torch.no_grad():
        expected = (x * 0.7 - shift) @ W + b
        assert torch.allclose(
            sampled_affine(x, W, b, pattern, shift=shift, scale=0.7),
            expected[pattern.row, pattern.col],
        )
        residual = target * 1.3 - offset - sparse_decode(values, W_dec, pattern)
        out = torch.empty_like(target)
        total, r = sparse_error(values, W_dec, pattern, target, offset, 1.3, out=out)
        assert r.data_ptr() == out.data_ptr()
        assert torch.allclose(r, residual) and torch.allclose(total, residual.pow(2).sum())


def test_a_deferred_weight_gradient_is_formed_as_the_backward_forms_it():
    g = torch.Generator().manual_seed(0)
    rows, cols, d = 40, 1300, 6  # more columns than a block of the transposed product

    def pattern(k):
        return Pattern.from_rows(
            torch.rand(rows, cols, generator=g).topk(k).indices, torch.zeros(rows, k), cols
        )[0]

    main, aux = pattern(7), pattern(3)  # two calls on one x, as TopK and AuxK
    x, shift = torch.randn(rows, d, generator=g), torch.randn(d, generator=g)
    W = torch.randn(d, cols, generator=g, requires_grad=True)
    b = torch.randn(cols, generator=g, requires_grad=True)
    weights = [torch.randn(p.nnz, generator=g) for p in (main, aux)]

    def loss(defer=None):
        return sum(
            (sampled_affine(x, W, b, p, shift=shift, scale=0.7, defer=defer) * w).sum()
            for p, w in zip((main, aux), weights, strict=True)
        )

    loss().backward()
    expected, expected_b = W.grad, b.grad
    W.grad = b.grad = None
    defer = DeferredGradient(x, 0.7, shift)
    loss(defer).backward()
    assert W.grad is None and len(defer) == 2
    assert torch.equal(b.grad, expected_b)  # the bias's gradient is not deferred
    bound = defer.norm_bound()
    out = torch.empty_like(W)
    formed = defer.form(out)
    assert formed.data_ptr() == out.data_ptr() and formed.stride() == W.stride()
    assert torch.equal(formed, expected)  # the same sums, bit for bit
    exact = torch.linalg.vector_norm(expected)
    assert exact <= bound <= 10 * exact  # an upper bound, and not a vacuous one here
    with pytest.raises(ValueError, match="no gradient to form"):
        defer.form()  # formed once: the terms are dropped


def test_the_transposed_product_accumulates_as_adding_a_separate_product():
    g = torch.Generator().manual_seed(1)
    rows, cols, d = 30, 700, 5
    pattern = Pattern.from_rows(
        torch.rand(rows, cols, generator=g).topk(4).indices, torch.zeros(rows, 4), cols
    )[0]
    values, dense = torch.randn(pattern.nnz, generator=g), torch.randn(rows, d, generator=g)
    u, v = torch.randn(d, generator=g), torch.randn(cols, generator=g)
    start = torch.randn(d, cols, generator=g)
    separate = start + pattern.transposed_product_t(values, dense, minus_outer=(u, v))
    accumulated = pattern.transposed_product_t(
        values, dense, minus_outer=(u, v), out=start.clone(), accumulate=True
    )
    assert torch.equal(accumulated, separate)


# -- the chunked selection -----------------------------------------------------------------------
@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 16 rows and column blocks of 64: a batch of 64 in 4 blocks of rows, each in
    several column parts, so every merge in the selection runs."""
    monkeypatch.setattr(TopKFamilySAE, "chunk_rows", 16)
    monkeypatch.setattr(TopKFamilySAE, "column_block", 64)


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
@pytest.mark.parametrize("dead_fraction", [0.0, 0.2, 1.0])
@pytest.mark.parametrize("batch", [64, 61])  # 61: a partial last block of rows
def test_chunked_selection_has_the_dense_loss_and_gradients(
    small_blocks, arch, dead_fraction, batch
):
    torch.manual_seed(0)
    d, n, k = 32, 512, 8
    sae = build_sae(SAEConfig(arch, d, n, k=k, input_scale=0.5), seed=1)
    assert sae._chunk_shape(batch)[0] > 1  # several column parts
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_(std=0.1)
    assert_dense_loss_and_gradients(sae, torch.randn(batch, d) * 2.0, torch.rand(n) < dead_fraction)


def test_batchtopk_recomputes_rows_holding_more_than_their_candidates(small_blocks):
    # One row holds far more than its share of the batch's top entries: more than the
    # candidates a row offers: the row is recomputed, and the selection stays exact.
    torch.manual_seed(0)
    d, n, k, batch = 32, 512, 4, 64
    sae = build_sae(SAEConfig("batchtopk", d, n, k=k, input_scale=0.5), seed=1)
    x = torch.randn(batch, d)
    x[5] *= 40.0
    out = sae.training_step(x, 0.25)
    out.loss.backward()
    grads = {name: p.grad.clone() for name, p in sae.named_parameters()}
    sae.zero_grad()
    pre = (x * 0.5 - sae.b_dec) @ sae.W_enc + sae.b_enc
    kept = pre.flatten().topk(batch * k).indices // n
    assert (kept == 5).sum() > 4 * k  # row 5 alone exceeds its candidates
    reference = dense_topk_reference(sae, x, 0.25, torch.zeros(n, dtype=torch.bool))
    reference.backward()
    assert torch.allclose(out.loss, reference, rtol=1e-5)
    for name, p in sae.named_parameters():
        assert torch.allclose(grads[name], p.grad, rtol=1e-4, atol=1e-6), name


def test_chunked_step_saves_no_batch_by_features_tensor(small_blocks):
    d, n, batch = 32, 512, 64
    sae = build_sae(SAEConfig("topk", d, n, k=8), seed=0)
    saved = []

    def pack(t):
        saved.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = sae.training_step(torch.randn(batch, d), 1 / 32, torch.rand(n) < 0.5)
    out.loss.backward()
    assert saved and all(math.prod(shape) < batch * n for shape in saved), saved


def test_decoder_constraint_in_blocks():
    # More decoder rows than a block of the constraint: every block is projected / rescaled.
    torch.manual_seed(0)
    sae = build_sae(SAEConfig("topk", 8, 2500, k=4), seed=0)
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(2500, 1) + 0.5)
    sae.W_dec.grad = torch.randn(2500, 8)
    W, grad = sae.W_dec.detach().clone(), sae.W_dec.grad.clone()
    sae.before_optimizer_step()
    along = (grad * W).sum(-1, keepdim=True) / (W * W).sum(-1, keepdim=True)
    torch.testing.assert_close(sae.W_dec.grad, grad - along * W)
    sae.after_optimizer_step()
    torch.testing.assert_close(sae.W_dec.detach(), W / W.norm(dim=-1, keepdim=True))


# -- relu --------------------------------------------------------------------------------------
def _relu_reference(sae, x, coefficient):
    x_norm = x * sae.cfg.input_scale
    x_in = x_norm - sae.b_dec if sae.cfg.subtract_b_dec_in_encoder else x_norm
    f = torch.relu(x_in @ sae.W_enc + sae.b_enc)
    x_hat = f @ sae.W_dec + sae.b_dec
    mse = (x_norm - x_hat).pow(2).sum(-1).mean()
    l1 = (f @ sae.W_dec.norm(dim=-1)).mean()
    return mse + coefficient * l1, mse, l1, f


@pytest.mark.parametrize("subtract", [False, True])
def test_relu_step_has_the_autograd_loss_and_gradients(subtract, monkeypatch):
    # Matmuls in blocks of 64 latents: 200 = 3 whole blocks and a part.
    monkeypatch.setattr(relu_module, "_PRODUCT_BLOCK", 64)
    torch.manual_seed(0)
    cfg = SAEConfig("relu", 24, 200, input_scale=0.7, subtract_b_dec_in_encoder=subtract)
    sae = build_sae(cfg, seed=0)
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.1 * torch.randn(p.shape))
    x = (torch.randn(1100, 24) * 2).requires_grad_()  # over two blocks of rows, and d/dx
    out = sae.training_step(x, 0.3)
    out.loss.backward()
    grads = {name: p.grad.clone() for name, p in sae.named_parameters()}
    grad_x = x.grad.clone()
    sae.zero_grad()
    x.grad = None
    loss, mse, l1, f = _relu_reference(sae, x, 0.3)
    loss.backward()
    assert torch.allclose(out.loss, loss, rtol=1e-5)
    assert torch.allclose(out.mse, mse, rtol=1e-5) and torch.allclose(out.sparsity, l1, rtol=1e-5)
    assert out.l0.item() == pytest.approx((f > 0).sum().item() / 1100)
    assert torch.equal(out.fired, (f > 0).any(0))
    for name, p in sae.named_parameters():
        assert torch.allclose(grads[name], p.grad, rtol=1e-4, atol=1e-6), name
    assert torch.allclose(grad_x, x.grad, rtol=1e-4, atol=1e-6)


# -- bfloat16 ----------------------------------------------------------------------------------
def test_compute_dtype_is_validated_and_written():
    cfg = SAEConfig("topk", 16, 64, k=4, compute_dtype="bfloat16")
    assert SAEConfig.from_json(json.loads(json.dumps(cfg.to_json()))) == cfg
    old = SAEConfig("relu", 16, 64).to_json()
    del old["compute_dtype"]  # configs written before the field load as float32
    assert SAEConfig.from_json(old).compute_dtype == "float32"
    with pytest.raises(ValueError, match="compute_dtype must be one of"):
        SAEConfig("relu", 16, 64, compute_dtype="float16")
    with pytest.raises(ValueError, match="jumprelu SAEs train with compute_dtype float32"):
        build_sae(SAEConfig("jumprelu", 16, 64, compute_dtype="bfloat16"))


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_bfloat16_selection_with_float32_values_and_gradients(arch):
    # Latents 0..k-1 win by a wide margin, so bfloat16 scores choose as float32 ones do; the
    # chosen values, the loss and the gradients are then float32 computations.
    torch.manual_seed(0)
    x = torch.randn(300, 32) * 2.0
    results = {}
    for dtype in ("float32", "bfloat16"):
        cfg = SAEConfig(arch, 32, 512, k=8, input_scale=0.5, compute_dtype=dtype)
        sae = build_sae(cfg, seed=1)
        with torch.no_grad():
            sae.b_enc[:8] = 20.0
        out = sae.training_step(x, 0.25)
        out.loss.backward()
        assert all(p.grad.dtype == torch.float32 for p in sae.parameters())
        results[dtype] = out, {n: p.grad for n, p in sae.named_parameters()}
    (out32, grads32), (out16, grads16) = results["float32"], results["bfloat16"]
    assert torch.allclose(out16.loss, out32.loss, rtol=1e-5)
    for name, grad in grads32.items():
        assert torch.allclose(grads16[name], grad, rtol=1e-4, atol=1e-6), name


def test_bfloat16_steps_are_close_to_float32(monkeypatch):
    monkeypatch.setattr(relu_module, "_PRODUCT_BLOCK", 200)  # relu: 512 latents in 3 blocks
    torch.manual_seed(0)
    x = torch.randn(300, 32) * 2.0
    dead = torch.rand(512) < 0.1
    for arch, coefficient in (("topk", 0.25), ("batchtopk", 0.25), ("relu", 0.1)):
        results = {}
        for dtype in ("float32", "bfloat16"):
            k = 8 if arch != "relu" else None
            cfg = SAEConfig(arch, 32, 512, k=k, input_scale=0.5, compute_dtype=dtype)
            sae = build_sae(cfg, seed=1)
            out = sae.training_step(x, coefficient, dead)
            out.loss.backward()
            assert all(p.grad.dtype == torch.float32 for p in sae.parameters())
            results[dtype] = out, sae.W_enc.grad
        (out32, grad32), (out16, grad16) = results["float32"], results["bfloat16"]
        assert out16.loss.dtype == torch.float32
        assert torch.allclose(out16.fvu, out32.fvu, rtol=1e-2), arch
        # topk: near ties may go the other way in bfloat16; relu: bfloat16 matmuls.
        assert (grad16 - grad32).norm() <= 0.2 * grad32.norm(), arch


def test_relu_step_works_in_blocks_reuses_its_buffer_and_refuses_a_second_backward(
    monkeypatch,
):
    monkeypatch.setattr(relu_module, "_PRODUCT_BLOCK", 16)
    torch.manual_seed(0)
    sae = build_sae(SAEConfig("relu", 16, 64, input_scale=0.5), seed=0)
    x = torch.randn(1100, 16)
    out = sae.training_step(x, 0.1)
    buffer = sae._block
    rows = relu_module._ROW_BLOCK
    # never [batch, n_features]; ReLU's mask, one block of columns
    assert [b.shape for b in buffer] == [(rows, 64), (rows, 16)]
    out.loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="one backward pass"):
        out.loss.backward()
    sae.zero_grad()
    again = sae.training_step(x, 0.1)
    assert sae._block is buffer
    (2 * again.loss).backward()  # the handed-over gradients follow the incoming gradient
    grads = {name: p.grad.clone() for name, p in sae.named_parameters()}
    sae.zero_grad()
    sae.training_step(x, 0.1).loss.backward()
    for name, p in sae.named_parameters():
        torch.testing.assert_close(grads[name], 2 * p.grad)
    with torch.no_grad():  # no graph: the loss alone, from the same buffer
        assert torch.equal(sae.training_step(x, 0.1).loss, again.loss.detach())
    assert sae._block is buffer
    sae.eval()
    assert sae._block is None


class _RecordingAdam(torch.optim.Adam):
    """Adam that notes where each gradient it steps on lies: [{name: data_ptr}] per step."""

    def __init__(self, named) -> None:
        self.names = {id(p): name for name, p in named}
        self.addresses: list[dict[str, int]] = []
        super().__init__([p for _, p in named], lr=1e-2)

    def step(self, closure=None):
        if not self.addresses or "done" in self.addresses[-1]:
            self.addresses.append({})
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self.addresses[-1][self.names[id(p)]] = p.grad.data_ptr()
        if "W_enc" in self.addresses[-1]:  # W_enc steps last (or with the others)
            self.addresses[-1]["done"] = 1
        return super().step(closure)


def _train_steps(sae, batches, dead, grad_clip, lend):
    """Adam steps; with `lend` as the trainer takes them (StepMemory, apply_gradients), else
    as plain autograd would. The parameters after each step, and where the gradients lay."""
    opt = _RecordingAdam(list(sae.named_parameters()))
    sae.step_memory = StepMemory() if lend else None
    states = []
    for x in batches:
        result = sae.training_step(x, 0.25, dead)
        result.loss.backward()
        if lend:
            apply_gradients(sae, opt, result, grad_clip)
        else:
            assert not result.deferred
            sae.before_optimizer_step()
            if grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(sae.parameters(), grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
        sae.after_optimizer_step()
        states.append({name: p.detach().clone() for name, p in sae.named_parameters()})
    return states, opt.addresses


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
@pytest.mark.parametrize("with_dead", [False, True])
# 1e3: the norm bound shows no clipping; 1e-4: clipped, the gradients formed first
@pytest.mark.parametrize("grad_clip", [0.0, 1e3, 1e-4])
def test_the_trainers_step_memory_and_deferred_gradient_change_no_result(
    arch, with_dead, grad_clip
):
    torch.manual_seed(0)
    d, n, k = 32, 512, 8
    batches = [torch.randn(64, d) * 2.0 for _ in range(3)]
    dead = (torch.rand(n) < 0.2) if with_dead else None
    plain = build_sae(SAEConfig(arch, d, n, k=k, input_scale=0.5), seed=1)
    lent = build_sae(SAEConfig(arch, d, n, k=k, input_scale=0.5), seed=1)
    expected, _ = _train_steps(plain, batches, dead, grad_clip, lend=False)
    got, addresses = _train_steps(lent, batches, dead, grad_clip, lend=True)
    for step_expected, step_got in zip(expected, got, strict=True):
        for name, value in step_expected.items():
            assert torch.equal(step_got[name], value), name
    if grad_clip != 1e-4 and not with_dead:
        # One weight gradient's memory for both, every step (AuxK's W_dec gradient gets
        # fresh memory, and autograd may keep that).
        assert len({step[name] for step in addresses for name in ("W_enc", "W_dec")}) == 1


def test_step_memory_lends_a_slot_only_while_no_gradient_lies_in_it():
    memory = StepMemory()
    a, b = torch.zeros(4, 6, requires_grad=True), torch.zeros(6, 4, requires_grad=True)
    a.grad = memory.gradient("slot", a)
    assert a.grad is not None and a.grad.stride() == a.stride()
    assert memory.gradient("slot", b) is None  # a's gradient is there
    assert memory.gradient("slot", a) is None  # a's .grad is set: accumulating
    pointer, a.grad = a.grad.data_ptr(), None
    lent = memory.gradient("slot", b)
    assert lent.data_ptr() == pointer and lent.shape == b.shape


def test_step_memory_leaves_gradients_that_are_kept_to_accumulate():
    torch.manual_seed(0)
    batches = [torch.randn(64, 32) for _ in range(2)]
    sae = build_sae(SAEConfig("topk", 32, 512, k=8), seed=1)
    sae.step_memory = StepMemory()
    for x in batches:  # accumulated over two steps: the second must not overwrite the first
        result = sae.training_step(x)
        result.loss.backward()
        for param, deferred in result.deferred:
            formed = deferred.form()
            param.grad = formed if param.grad is None else param.grad + formed
    accumulated = {name: p.grad.clone() for name, p in sae.named_parameters()}
    reference = build_sae(SAEConfig("topk", 32, 512, k=8), seed=1)
    for x in batches:
        reference.training_step(x).loss.backward()
    for name, p in reference.named_parameters():
        torch.testing.assert_close(accumulated[name], p.grad, rtol=1e-6, atol=0)
