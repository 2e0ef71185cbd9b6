"""eval, analyze and attribute with `device="cuda"` give the CPU's numbers, on a tiny model, a
tiny activation store (harvested on the CPU) and a tiny TopK SAE; a file written from CUDA
tensors is the one written from their CPU copies."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

SITE = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def inputs(tiny_llama, corpus_file, tmp_path_factory) -> dict[str, str]:
    """{model, acts, sae}: the tiny model's folder, a store of it and an SAE folder for it."""
    from monoscope.testing import harvest_tiny, tiny_sae

    root = tmp_path_factory.mktemp("gpu_stages")
    store = harvest_tiny(
        tiny_llama, corpus_file, root / "acts", SITE, tokens=2000, heldout_fraction=0.25
    )
    tiny_sae(tiny_llama, SITE).save(root / "sae")
    return {"model": tiny_llama.name, "acts": str(store.path), "sae": str(root / "sae")}


def assert_close(got: float | None, want: float | None, what: str, rel: float = 1e-4) -> None:
    assert (got is None) == (want is None), what
    if want is not None:
        assert abs(got - want) <= rel * abs(want) + 1e-6, f"{what}: {got} against {want}"


def test_eval_on_cuda_gives_the_cpu_numbers(inputs, tmp_path):
    from monoscope.evaluate import EvalConfig, run

    reports = {
        device: run(
            EvalConfig(**inputs, out=str(tmp_path / f"{device}.json"), n_contexts=4, device=device)
        )
        for device in ("cpu", "cuda")
    }
    cpu, cuda = reports["cpu"]["reconstruction"], reports["cuda"]["reconstruction"]
    assert cuda["tokens"] == cpu["tokens"] > 0
    for key in ("fvu", "mse", "l0", "explained_variance"):
        assert_close(cuda[key], cpu[key], key)
    assert cuda["features"]["dead_fraction"] == pytest.approx(cpu["features"]["dead_fraction"])
    splice_cpu, splice_cuda = reports["cpu"]["splice"], reports["cuda"]["splice"]
    for name, value in splice_cpu["ce"].items():
        assert_close(splice_cuda["ce"][name], value, f"ce {name}")
    for ablation, value in splice_cpu["loss_recovered"].items():
        assert_close(splice_cuda["loss_recovered"][ablation], value, ablation, rel=1e-3)


def _features(db: Path) -> dict[int, tuple]:
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT id, n_fired, max_act, mean_act, logit_top FROM features")
        return {row[0]: row[1:] for row in rows}
    finally:
        conn.close()


def test_analyze_on_cuda_gives_the_cpu_numbers(inputs, tmp_path):
    from monoscope.analyze import AnalyzeConfig, run

    stores = {
        device: _features(
            run(
                AnalyzeConfig(
                    **inputs,
                    out=str(tmp_path / f"{device}.db"),
                    map=False,
                    progress=False,
                    device=device,
                )
            )
        )
        for device in ("cpu", "cuda")
    }
    cpu, cuda = stores["cpu"], stores["cuda"]
    assert cuda.keys() == cpu.keys()
    # A latent at the k-th place by a rounding error may go either way on a token or two.
    differ = [f for f in cpu if cuda[f][0] != cpu[f][0]]
    assert len(differ) <= 0.02 * len(cpu), f"n_fired differs for features {differ}"
    for f, (n_fired, max_act, mean_act, logit_top) in cpu.items():
        assert abs(cuda[f][0] - n_fired) <= 2, f
        assert_close(cuda[f][1], max_act, f"max_act of {f}", rel=1e-3)
        if f not in differ:
            assert_close(cuda[f][2], mean_act, f"mean_act of {f}", rel=1e-3)
        assert cuda[f][3] == logit_top, f"logit effects of {f}"


def test_attribute_on_cuda_gives_the_cpu_numbers(inputs):
    from monoscope.steer import AttributeConfig, run

    results = {
        device: run(
            AttributeConfig(
                sae=inputs["sae"],
                model=inputs["model"],
                prompt="the model reads",
                top=5,
                device=device,
            )
        )
        for device in ("cpu", "cuda")
    }
    cpu, cuda = results["cpu"], results["cuda"]
    assert cuda["target"] == cpu["target"]
    assert_close(cuda["metric"]["value"], cpu["metric"]["value"], "metric")
    for got, want in zip(cuda["rows"], cpu["rows"], strict=True):
        assert (got["feature"], got["position"]) == (want["feature"], want["position"])
        assert_close(got["attribution"], want["attribution"], "attribution", rel=1e-3)


def test_a_file_written_from_cuda_tensors_is_the_one_written_from_their_cpu_copies(
    tmp_path, monkeypatch
):
    """Checkpoints are written from the device a piece at a time (tensorfiles.py)."""
    import torch

    from monoscope import tensorfiles

    monkeypatch.setattr(tensorfiles, "WRITE_BYTES", 1000)  # several pieces a tensor
    generator = torch.Generator().manual_seed(0)
    tensors = {"w": torch.randn(64, 33, generator=generator), "n": torch.arange(5)}
    on_cpu = tensorfiles.atomic_write_safetensors(tmp_path / "cpu.safetensors", tensors)
    on_cuda = tensorfiles.atomic_write_safetensors(
        tmp_path / "cuda.safetensors", {k: v.cuda() for k, v in tensors.items()}
    )
    assert on_cuda == on_cpu
    assert (tmp_path / "cuda.safetensors").read_bytes() == (
        tmp_path / "cpu.safetensors"
    ).read_bytes()
