"""Against the real EleutherAI sparsify: coders it builds, trains a few steps and saves are read
by monoscope exactly, and monoscope's exports are read by sparsify exactly, for every option.

Runs where `eai-sparsify` is installed (CI: a separate venv, see .ci/run); skipped otherwise.
"""

from __future__ import annotations

import pytest
import torch

sparsify = pytest.importorskip(
    "sparsify", reason="eai-sparsify is not installed: the real-library tier needs it"
)
from sparsify import SparseCoder, SparseCoderConfig  # noqa: E402

from monoscope.sae import SAEConfig, build_sae, convert, load_sae  # noqa: E402
from monoscope.sae.sparsify import export_sparsify  # noqa: E402
from monoscope.testing import SPARSIFY_OPTION_CASES as OPTION_CASES  # noqa: E402

D, N, K = 16, 64, 4


def data(n: int = 256, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D, generator=g) * 3 + torch.randn(D, generator=g)


def trained_coder(seed: int = 0, **options) -> SparseCoder:
    """A sparsify coder after a few Adam steps of its own loss on random rows (a transcoder
    predicts a fixed linear map of its input)."""
    torch.manual_seed(seed)
    coder = SparseCoder(D, SparseCoderConfig(num_latents=N, k=K, **options))
    x, mix = data(seed=seed), torch.randn(D, D) / D**0.5
    y = x @ mix if coder.cfg.transcode else None
    with torch.no_grad():  # start away from zero where sparsify starts at zero
        coder.encoder.bias.normal_(0, 0.1)
        coder.W_dec.add_(torch.randn_like(coder.W_dec) * 0.1)
        coder.b_dec.copy_(x.mean(0) if y is None else y.mean(0))
    optimizer = torch.optim.Adam(coder.parameters(), lr=1e-2)
    for _ in range(5):
        out = coder(x, y)
        (out.fvu + out.multi_topk_fvu / 8).backward()
        optimizer.step()
        optimizer.zero_grad()
    return coder


@torch.no_grad()
def sparsify_outputs(coder: SparseCoder, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sparsify's dense codes and reconstruction (its encode and decode, plus the skip term as
    its forward adds it)."""
    top_acts, top_indices, _ = coder.encode(x)
    codes = torch.zeros(x.shape[0], coder.num_latents).scatter_(-1, top_indices, top_acts)
    y = coder.decode(top_acts, top_indices)
    if coder.W_skip is not None:
        y = y + x @ coder.W_skip.mT
    return codes, y


@pytest.mark.parametrize("options", OPTION_CASES.values(), ids=OPTION_CASES.keys())
def test_sparsify_coders_load_exactly(options, tmp_path):
    coder = trained_coder(**options)
    coder.save_to_disk(tmp_path / "layers.3")
    sae = load_sae(tmp_path / "layers.3")
    x = data(seed=1)
    codes, y = sparsify_outputs(coder, x)
    with torch.no_grad():
        assert torch.allclose(sae.encode(x), codes, atol=1e-5)
        assert torch.allclose(sae(x), y, atol=1e-4)
        if not options.get("multi_topk"):  # its forward() returns the top 4k's decode then
            assert torch.allclose(sae(x), coder(x).sae_out, atol=1e-4)
    assert sae.cfg.transcoder == bool(options.get("transcode"))


@pytest.mark.parametrize("options", OPTION_CASES.values(), ids=OPTION_CASES.keys())
def test_monoscope_exports_load_in_sparsify(options, tmp_path):
    coder = trained_coder(seed=2, **options)
    coder.save_to_disk(tmp_path / "src")
    convert(tmp_path / "src", "monoscope", tmp_path / "ours")
    convert(tmp_path / "ours", "sparsify", tmp_path / "back")
    back = SparseCoder.load_from_disk(tmp_path / "back")
    assert back.cfg == coder.cfg
    x = data(seed=3)
    for got, want in zip(sparsify_outputs(back, x), sparsify_outputs(coder, x), strict=True):
        assert torch.allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("subtract", [True, False])
def test_monoscope_trained_topk_exports_to_sparsify(subtract, tmp_path):
    cfg = SAEConfig("topk", D, N, k=K, input_scale=0.37, subtract_b_dec_in_encoder=subtract)
    sae = build_sae(cfg, seed=0)
    x = data(seed=4)
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-2)
    for _ in range(5):
        sae.training_step(x, 0.0).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    export_sparsify(sae, tmp_path / "sp")
    coder = SparseCoder.load_from_disk(tmp_path / "sp")
    codes, y = sparsify_outputs(coder, x)
    with torch.no_grad():
        assert torch.allclose(codes, sae.encode(x), atol=1e-5)
        assert torch.allclose(y, sae(x), atol=1e-4)


def test_checkpoint_folder_matches_load_many(tmp_path):
    run = tmp_path / "run"
    coders = {"layers.2": trained_coder(seed=5), "layers.10": trained_coder(seed=6)}
    coders["layers.4.mlp"] = trained_coder(seed=7, transcode=True)
    for name, coder in coders.items():
        coder.save_to_disk(run / name)
    theirs = SparseCoder.load_many(str(run), local=True)
    assert list(theirs) == ["layers.2", "layers.4.mlp", "layers.10"]
    with pytest.raises(ValueError, match=r"holds 3 sparsify SAEs: layers\.2 "):
        load_sae(run)
    x = data(seed=8)
    for name, coder in theirs.items():
        sae = load_sae(run / name)
        with torch.no_grad():
            assert torch.allclose(sae(x), sparsify_outputs(coder, x)[1], atol=1e-4)
