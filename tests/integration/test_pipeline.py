"""harvest -> train -> eval on the real built-in model, small enough for CI."""

from __future__ import annotations

import math

import pytest

from monoscope.evaluate import EvalConfig
from monoscope.evaluate import run as run_eval
from monoscope.harvest import HarvestConfig
from monoscope.harvest import run as run_harvest
from monoscope.models import load_model
from monoscope.train import TrainConfig, read_log
from monoscope.train import run as run_train

pytestmark = pytest.mark.integration


def test_pipeline_on_the_builtin_model(tmp_path):
    lm = load_model("smollm2-135m", device="cpu")
    site = "blocks.6.hook_resid_post"
    store = run_harvest(
        HarvestConfig(
            sites=[site],
            tokens=12_000,
            out=str(tmp_path / "acts"),
            context=64,
            dtype="bf16",
            progress=False,
        ),
        lm,
    )
    run_train(
        TrainConfig(
            acts=str(store.path),
            out=str(tmp_path / "sae"),
            arch="topk",
            features="4x",
            k=16,
            batch_size=1024,
            lr=4e-3,
            progress=False,
            log_every=1,  # from the first step: 11 steps would log only steps 10 and 11
        )
    )
    log = read_log(tmp_path / "sae")
    assert log[-1]["fvu"] < log[0]["fvu"] and log[-1]["l0"] == pytest.approx(16, abs=0.5)
    report = run_eval(
        EvalConfig(
            sae=str(tmp_path / "sae"), acts=str(store.path), model="smollm2-135m", n_contexts=4
        ),
        lm=lm,
    )
    recon, splice = report["reconstruction"], report["splice"]
    assert 0 < recon["fvu"] < 1 and math.isclose(recon["l0"], 16, abs_tol=0.5)
    ce = splice["ce"]
    assert ce["sae_with_error"] == pytest.approx(ce["clean"], abs=1e-3)
    assert ce["clean"] < ce["sae"] < ce["zero_ablation"]
    assert 0 < splice["loss_recovered"]["zero_ablation"] <= 1
    assert (tmp_path / "eval.json").exists()
