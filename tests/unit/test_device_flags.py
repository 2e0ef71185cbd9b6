"""`--device` on every stage but train (issue 24, part 1): the flag reaches the model and SAE
loads, `auto` is CUDA when present and the CPU otherwise, and a device that is not there is the
resolver's one-line error (exit code 2) before anything is loaded.

The loaders are replaced by ones that record the device they are given: the SAE loader returns
a tiny SAE (so the run goes on to the model), the model loader stops the run. The CUDA check is
patched both ways, so these tests mean the same on a machine with a GPU."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import monoscope.analyze.runner
import monoscope.evaluate.evaluator
import monoscope.harvest.harvester
import monoscope.models
import monoscope.sae
import monoscope.serve.server
from monoscope.analyze import AnalyzeConfig
from monoscope.cli import main
from monoscope.testing import harvest_tiny, random_feature_store, tiny_sae

SITE = "blocks.1.hook_resid_post"
STAGES = ("harvest", "eval", "analyze", "steer", "attribute", "features-for", "serve")
LOADS = {"harvest": ["model"], **{stage: ["sae", "model"] for stage in STAGES[1:]}}
"""What each stage loads, in order, before it runs anything."""


class Reached(Exception):
    """The model loader was called: the run got as far as loading the model."""


@pytest.fixture(scope="module")
def inputs(tiny_llama, corpus_file, tmp_path_factory) -> dict:
    """A tiny activation store, an SAE that fits it, an SAE folder and a feature store naming
    them (the folder's contents are never read: the SAE loader is replaced)."""
    root = tmp_path_factory.mktemp("device_flags")
    store = harvest_tiny(tiny_llama, corpus_file, root / "acts", SITE, tokens=300)
    sae_dir = root / "sae"
    sae_dir.mkdir()
    meta = {
        "sae": {"path": str(sae_dir), "sha256": None, "site": SITE, "model": tiny_llama.name},
        "model": {"name": tiny_llama.name, "revision": None},
    }
    db = random_feature_store(root / "features.db", n_features=8, n_tokens=1000, meta=meta)
    return {"store": store.path, "sae_dir": sae_dir, "db": db, "sae": tiny_sae(tiny_llama, SITE)}


def argv(stage: str, inputs: dict, tmp: Path) -> list[str]:
    """A command line of `stage` that would run on `inputs` (without --device)."""
    sae, store = str(inputs["sae_dir"]), str(inputs["store"])
    return {
        "harvest": ["harvest", "--out", str(tmp / "acts"), "--no-progress"],
        "eval": ["eval", "--sae", sae, "--acts", store, "--model", "m", "--out", str(tmp / "e")],
        "analyze": [
            *("analyze", "--sae", sae, "--acts", store, "--out", str(tmp / "f.db")),
            *("--no-map", "--no-progress"),
        ],
        "steer": ["steer", "--sae", sae, "--feature", "1=2", "--prompt", "hi"],
        "attribute": ["attribute", "--sae", sae, "--prompt", "hi"],
        "features-for": ["features-for", "--sae", sae, "--prompt", "a [[b]]"],
        "serve": ["serve", str(inputs["db"]), "--port", "0"],
    }[stage]


@pytest.fixture
def loads(monkeypatch, inputs) -> list[tuple[str, torch.device]]:
    """(what, device) of every model and SAE load, in order."""
    calls: list[tuple[str, torch.device]] = []

    def load_sae(folder, device=None, verify=None):
        calls.append(("sae", device))
        return inputs["sae"]

    def load_model(name, dtype="float32", device=None):
        calls.append(("model", device))
        raise Reached

    monkeypatch.setattr(monoscope.sae, "load_sae", load_sae)
    # The modules that import the loader by name (sys.modules: a package may export a
    # function of its module's name).
    for module in (
        "monoscope.models",
        "monoscope.harvest.harvester",
        "monoscope.evaluate.evaluator",
        "monoscope.analyze.runner",
    ):
        monkeypatch.setattr(sys.modules[module], "load_model", load_model)
    return calls


@pytest.fixture(autouse=True)
def serve_fires_once(monkeypatch):
    """`serve` answers one "what fires" request (which loads the model and SAE) instead of
    listening."""
    from fastapi.testclient import TestClient

    def run_on(app, sock, host=None):
        sock.close()
        TestClient(app).post("/api/fires", json={"text": "hi"})

    monkeypatch.setattr(monoscope.serve.server, "run_on", run_on)


def cuda_present(monkeypatch, present: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: present)


@pytest.mark.parametrize("stage", STAGES)
def test_device_cpu_reaches_the_model_and_sae_loads(stage, inputs, loads, tmp_path):
    with pytest.raises(Reached):
        main([*argv(stage, inputs, tmp_path), "--device", "cpu"])
    assert loads == [(what, torch.device("cpu")) for what in LOADS[stage]]


@pytest.mark.parametrize("present", [False, True], ids=["no-cuda", "cuda"])
@pytest.mark.parametrize("stage", STAGES)
def test_auto_is_cuda_when_present_else_the_cpu(
    stage, present, inputs, loads, tmp_path, monkeypatch
):
    cuda_present(monkeypatch, present)
    with pytest.raises(Reached):
        main(argv(stage, inputs, tmp_path))  # --device auto is the default
    expected = torch.device("cuda" if present else "cpu")
    assert loads == [(what, expected) for what in LOADS[stage]]


@pytest.mark.parametrize("stage", STAGES)
def test_device_cuda_without_cuda_is_one_line_before_any_load(
    stage, inputs, loads, tmp_path, monkeypatch, capsys
):
    cuda_present(monkeypatch, False)
    assert main([*argv(stage, inputs, tmp_path), "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert (
        err
        == f"monoscope {stage}: error: --device cuda: no CUDA device is available here (use cpu)\n"
    )
    assert loads == []


def test_a_name_that_is_no_device_is_one_line(inputs, loads, tmp_path, capsys):
    assert main([*argv("eval", inputs, tmp_path), "--device", "gpu"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "monoscope eval: error: --device 'gpu' is not a device: use auto, cpu, cuda, cuda:N or "
        "mps\n"
    )
    assert loads == []


def test_analyze_device_does_not_change_what_a_store_holds():
    """A store analysed on one device is resumed or reused on another: the device is no
    parameter of its contents."""
    assert AnalyzeConfig(device="cuda").params() == AnalyzeConfig(device="cpu").params()
    assert "device" not in AnalyzeConfig().params()
