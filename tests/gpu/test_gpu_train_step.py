"""The TopK-family training step on CUDA against the same step on the CPU: the same SAE weights
and batch give the same latents, loss and gradients (W_enc's deferred gradient formed, as the
trainer forms it), within float tolerance; with compute_dtype bfloat16 the CUDA step stays
within tolerance of the float32 CPU step, its weights and gradients float32."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor

D, N_FEATURES, K, ROWS = 64, 512, 8, 256
DEAD = 128  # latents marked dead: AuxK runs on them


def make_sae(arch: str, compute_dtype: str = "float32"):
    from monoscope.sae import SAEConfig, build_sae

    cfg = SAEConfig(arch=arch, d_in=D, n_features=N_FEATURES, k=K, compute_dtype=compute_dtype)
    return build_sae(cfg, seed=0)


def batch() -> tuple[Tensor, Tensor]:
    """(x [ROWS, D], dead_mask [N_FEATURES]): activation-like rows, an offset and a spread."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(ROWS, D, generator=gen) * 3 + torch.randn(D, generator=gen)
    dead = torch.zeros(N_FEATURES, dtype=torch.bool)
    dead[:DEAD] = True
    return x, dead


def run_step(sae, x: Tensor, dead: Tensor, device: str, memory: bool) -> dict[str, Tensor]:
    """One training step of `sae` moved to `device` (as the trainer runs it: backward, then
    the deferred gradients formed); its outputs and every parameter's gradient, on the CPU."""
    from monoscope.sae.step_memory import StepMemory
    from monoscope.sae.topk import AUXK_COEFFICIENT

    sae = copy.deepcopy(sae).to(device)
    sae.step_memory = StepMemory() if memory else None
    out = sae.training_step(x.to(device), AUXK_COEFFICIENT, dead.to(device))
    out.loss.backward()
    names = {id(p): name for name, p in sae.named_parameters()}
    grads = {name: p.grad for name, p in sae.named_parameters() if p.grad is not None}
    for param, deferred in out.deferred:
        grads[names[id(param)]] = deferred.form()
    assert set(grads) == set(names.values()), "every parameter gets a gradient"
    for name, p in sae.named_parameters():
        assert p.dtype == torch.float32 and grads[name].dtype == torch.float32, name
    values = {k: getattr(out, k).detach() for k in ("loss", "mse", "sparsity", "l0", "fvu")}
    values["fired"] = out.fired
    return {k: v.cpu() for k, v in {**values, **grads}.items()}


def assert_near(got: Tensor, want: Tensor, rel: float, what: str) -> None:
    """|got - want| <= rel * max|want| everywhere (a scale-aware tolerance)."""
    err = float((got.double() - want.double()).abs().max())
    scale = float(want.double().abs().max())
    assert err <= rel * scale + 1e-12, f"{what}: max error {err:.3g} against scale {scale:.3g}"


@pytest.mark.parametrize("memory", [False, True], ids=["plain", "step-memory"])
@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_cuda_step_matches_the_cpu_step(arch, memory):
    sae, (x, dead) = make_sae(arch), batch()
    cpu = run_step(sae, x, dead, "cpu", memory)
    cuda = run_step(sae, x, dead, "cuda", memory)
    # The same latents chosen: which fired, and how many per row, exactly.
    assert torch.equal(cuda["fired"], cpu["fired"])
    assert float(cuda["l0"]) == float(cpu["l0"])
    for key in ("loss", "mse", "sparsity", "fvu"):
        assert_near(cuda[key], cpu[key], 1e-5, key)
    for name, _ in sae.named_parameters():
        assert_near(cuda[name], cpu[name], 1e-4, f"gradient of {name}")


def cosine(a: Tensor, b: Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float(a @ b / (a.norm() * b.norm()).clamp_min(1e-300))


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_cuda_bfloat16_selection_is_within_tolerance_of_the_float32_cpu_step(arch):
    """bfloat16 only chooses the latents (near-ties may go the other way); values, loss and
    gradients are float32 for that choice."""
    x, dead = batch()
    reference = run_step(make_sae(arch), x, dead, "cpu", memory=True)
    bf16 = run_step(make_sae(arch, "bfloat16"), x, dead, "cuda", memory=True)
    for key in ("loss", "fvu", "l0"):
        assert_near(bf16[key], reference[key], 0.02, key)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert cosine(bf16[name], reference[name]) > 0.98, name
