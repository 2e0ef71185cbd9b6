"""monoscope.train: schedules, dead latents, L0 feedback, checkpoints and exact resume."""

from __future__ import annotations

import json
import os
import shutil
import signal

import numpy as np
import pytest
import torch

from monoscope.evaluate import fvu
from monoscope.sae import SAEConfig, build_sae, load_sae
from monoscope.sae.training import RECIPES, recipe_defaults
from monoscope.train import TrainConfig, TrainingDivergedError, TrainingInterrupted, read_log, run
from monoscope.train import refit as refit_module
from monoscope.train import trainer as train_run
from monoscope.train.average import WeightAverage
from monoscope.train.config import ARCH_DEFAULTED
from monoscope.train.dead import DeadLatentTracker
from monoscope.train.idle import IdleMomentumReset
from monoscope.train.refit import refit_decoder
from monoscope.train.schedules import coefficient_warmup, learning_rate
from monoscope.train.sources import ModelSource, open_source
from monoscope.train.start import new_start
from monoscope.train.target_l0 import L0Controller


def test_schedules_follow_the_recipe():
    assert [learning_rate(s, 10, 1.0) for s in (0, 7, 8, 9)] == [1.0, 1.0, 1.0, 0.5]
    assert learning_rate(99, 100, 2.0) == pytest.approx(2.0 / 20)
    # TopK's linear warm-up over the first 10% of steps, then the same decay.
    warm = [learning_rate(s, 100, 2.0, 0.2, 0.1) for s in (0, 4, 9, 10, 79, 99)]
    assert warm == pytest.approx([0.2, 1.0, 2.0, 2.0, 2.0, 2.0 / 20])


def test_architecture_defaults_and_overrides():
    topk, relu = TrainConfig(arch="topk").resolved(), TrainConfig(arch="relu").resolved()
    assert (topk.lr, topk.adam_beta1, topk.lr_warmup_fraction) == (4e-3, 0.8, 0.1)
    assert (relu.lr, relu.adam_beta1, relu.lr_warmup_fraction) == (2e-3, 0.9, 0)
    assert (topk.decoder_lr_multiple, relu.decoder_lr_multiple) == (1.0, 5.0)
    relu_paper = TrainConfig(arch="relu", recipe="paper").resolved()
    assert (relu_paper.lr, relu_paper.coefficient, relu_paper.b_dec_init) == (5e-5, 5.0, "zero")
    short_run = TrainConfig(arch="topk", recipe="short-run").resolved()
    assert (short_run.decoder_lr_multiple, short_run.adam_basis) == (4.0, "eigen")
    assert (topk.adam_basis, relu.adam_basis) == ("eigen", "standard")
    assert TrainConfig(arch="batchtopk").resolved().adam_basis == "standard"
    assert TrainConfig(arch="topk", adam_basis="standard").resolved().adam_basis == "standard"
    with pytest.raises(ValueError, match="--adam-basis must be eigen or standard"):
        TrainConfig(adam_basis="pca")
    assert (topk.idle_momentum, relu.idle_momentum) == ("reset", "reset")
    assert TrainConfig(arch="batchtopk").resolved().idle_momentum == "keep"
    assert TrainConfig(arch="relu", idle_momentum="keep").resolved().idle_momentum == "keep"
    with pytest.raises(ValueError, match="--idle-momentum must be reset or keep"):
        TrainConfig(idle_momentum="lazy")
    assert (topk.k, TrainConfig(k=8).resolved().k, relu.k) == (32, 8, None)
    for arch in ("relu", "jumprelu"):  # a k they would ignore is refused, not dropped
        with pytest.raises(ValueError, match=f"k applies to topk and batchtopk; {arch}"):
            TrainConfig(arch=arch, k=8)
    mine = TrainConfig(arch="topk", lr=1e-3, adam_beta1=0.9, lr_warmup_fraction=0.0).resolved()
    assert (mine.lr, mine.adam_beta1, mine.lr_warmup_fraction) == (1e-3, 0.9, 0)
    assert TrainConfig(arch="relu", decoder_lr_multiple=2).resolved().decoder_lr_multiple == 2
    # β1 0 is a setting now (no momentum), not "the default".
    assert TrainConfig(arch="topk", adam_beta1=0.0).resolved().adam_beta1 == 0.0
    with pytest.raises(ValueError, match="--adam-beta1"):
        TrainConfig(adam_beta1=1.0)
    for bad in ({"lr": 0.0}, {"k": 0}, {"decoder_lr_multiple": -1}):
        with pytest.raises(ValueError, match="--" + next(iter(bad)).replace("_", "-")):
            TrainConfig(**bad)
    assert (topk.decoder_init_power, relu.decoder_init_power) == (0.125, 0.0)
    assert TrainConfig(arch="topk", decoder_init_power=0).resolved().decoder_init_power == 0
    with pytest.raises(ValueError, match="--decoder-init-power applies to topk and batchtopk"):
        TrainConfig(arch="relu", decoder_init_power=0.5)
    # The recipe's lr decay, off with a weight average (which replaces it) unless given.
    averaged = TrainConfig(weight_average=0.2)
    assert (topk.decay_fraction, averaged.resolved().decay_fraction) == (0.2, 0.0)
    assert TrainConfig(weight_average=0.2, decay_fraction=0.1).resolved().decay_fraction == 0.1
    assert TrainConfig(decay_fraction=0).resolved().decay_fraction == 0
    assert [coefficient_warmup(s, 100) for s in (0, 2, 4, 50)] == [0.2, 0.6, 1.0, 1.0]
    assert coefficient_warmup(0, 10) == 1.0  # fewer steps than one warm-up step: no warm-up


def test_a_recipe_trains_with_its_values_and_the_sae_records_it(low_rank_npy, tmp_path):
    sae = run(cfg(low_rank_npy, tmp_path / "sae", recipe="paper"))
    training = sae.cfg.training
    assert (training["recipe"], training["lr"]) == ("paper", 1e-4)
    assert training["adam_basis"] == "standard"
    assert training["decoder_lr_multiple"] == 1.0 and training["adam_betas"][0] == 0.9


def test_recipes_fill_only_what_is_unset_and_a_size_scaled_lr_needs_the_size():
    paper = TrainConfig(arch="batchtopk", recipe="paper")
    # Bussmann et al.: 2e-4 / sqrt(F / 2^14); unknown until the width is.
    assert paper.resolved(4 * 2**14).lr == pytest.approx(1e-4)
    assert paper.resolved().lr is None
    gao = TrainConfig(recipe="paper", adam_beta1=0.5).resolved()
    assert (gao.lr, gao.adam_basis, gao.adam_beta1) == (1e-4, "standard", 0.5)
    assert TrainConfig(recipe="short-run").resolved().adam_basis == "eigen"
    with pytest.raises(ValueError, match="--recipe must be default, short-run or paper"):
        TrainConfig(recipe="fast")


def test_the_defaults_live_on_the_architectures_and_the_help_shows_them():
    from monoscope.sae.registry import TRAINED

    for cls in TRAINED:
        for recipe in RECIPES:
            resolved = TrainConfig(arch=cls.arch, recipe=recipe).resolved(9216)
            defaults = recipe_defaults(cls, recipe)
            for name in ARCH_DEFAULTED:
                assert getattr(resolved, name) == getattr(defaults, name) or name == "lr"
            assert resolved.lr == defaults.lr_for(9216), (cls.arch, recipe)
            assert resolved.resolved() == resolved  # nothing left to resolve
    assert (
        TrainConfig.default_help("lr") == "relu 0.002, topk 0.004, batchtopk 0.0025, jumprelu 0.001"
    )
    assert TrainConfig.default_help("k") == "topk 32, batchtopk 32"
    assert TrainConfig.default_help("seed") is None
    with pytest.raises(ValueError, match="arch must be one of relu, topk, batchtopk, jumprelu"):
        TrainConfig(arch="gated")


def test_settings_of_older_versions_read_their_defaults_as_none():
    from monoscope.train.config import from_older_version

    old = {"k": 0, "lr": 0.0, "coefficient": -1.0, "adam_basis": "", "decay_fraction": -1.0}
    old |= {"b_enc_init_share": 0.0, "seed": 0, "tokens": 0, "overwrite": False}
    assert from_older_version(old) == {
        "k": None,
        "lr": None,
        "coefficient": None,
        "adam_basis": None,
        "decay_fraction": None,
        "b_enc_init_share": 0.0,  # 0 was a setting (b_enc at 0), negative the default
        "seed": 0,
        "tokens": 0,
        "overwrite": False,
    }


def test_the_weight_average_is_a_mean_then_an_exponential_average():
    module = torch.nn.Linear(3, 2)
    average = WeightAverage(module, time_constant=2.5)
    iterates = [torch.full((2, 3), float(v)) for v in (4.0, 8.0, 1.0, 5.0)]
    for weight in iterates:
        with torch.no_grad():
            module.weight.copy_(weight)
        average.update(module)
    # Updates 1 and 2 weigh 1/n (a plain mean: 6), then 1/τ = 0.4 each.
    expected = (6.0 * 0.6 + 1.0 * 0.4) * 0.6 + 5.0 * 0.4
    torch.testing.assert_close(average.averages[0], torch.full((2, 3), expected))
    restored = WeightAverage(module, time_constant=2.5)
    restored.load(average.tensors(), updates=4)
    for kept, loaded in zip(average.averages, restored.averages, strict=True):
        assert torch.equal(kept, loaded)
    with pytest.raises(ValueError, match="no weight average of bias"):
        restored.load({"average.weight": average.averages[0]}, updates=4)


def test_a_weight_averaged_run_saves_the_average_of_its_iterates(
    low_rank_npy, tmp_path, monkeypatch
):
    iterates = []

    class Recording(WeightAverage):
        def update(self, module):
            iterates.append({n: p.detach().clone() for n, p in module.named_parameters()})
            super().update(module)

    monkeypatch.setattr(train_run, "WeightAverage", Recording)
    options = dict(adam_basis="standard", weight_average=0.25)
    sae = run(cfg(low_rank_npy, tmp_path / "sae", **options))
    assert len(iterates) == 12 and sae.cfg.training["weight_average"] == 0.25
    assert sae.cfg.training["lr_decay_fraction"] == 0.0
    for name, value in sae.named_parameters():
        expected = iterates[0][name]
        for n, step in enumerate(iterates[1:], start=2):
            expected = expected.lerp(step[name], max(1 / n, 1 / 3))  # τ = 0.25 x 12 steps
        if name == "W_dec":  # rows back to unit norm, as TopK keeps them
            expected = expected / expected.norm(dim=-1, keepdim=True)
        torch.testing.assert_close(value.detach(), expected, msg=name)
        assert not torch.equal(value, iterates[-1][name]), name  # not the last weights


def test_a_weight_averaged_run_resumes_bit_identically(low_rank_npy, tmp_path, monkeypatch):
    reference = run(cfg(low_rank_npy, tmp_path / "ref", weight_average=0.5))
    run_killed_at(7, cfg(low_rank_npy, tmp_path / "sae", weight_average=0.5), monkeypatch)
    assert "average.W_dec" in train_run.load_checkpoint(tmp_path / "sae").tensors
    resumed = run(cfg(low_rank_npy, tmp_path / "sae", weight_average=0.5))
    for name, value in reference.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name


def test_a_latent_without_a_gradient_keeps_its_weights_and_loses_its_momentum():
    gen = torch.Generator().manual_seed(0)
    saes = [build_sae(SAEConfig(arch="topk", d_in=4, n_features=6, k=2), seed=0) for _ in "ab"]
    opts = [torch.optim.Adam(sae.parameters(), lr=0.1) for sae in saes]
    reset = IdleMomentumReset(saes[0], opts[0])  # the second SAE runs plain Adam

    def step(idle: list[int]) -> None:
        grads = [torch.randn(p.shape, generator=gen) for p in saes[0].parameters()]
        for sae, opt in zip(saes, opts, strict=True):
            for p, g in zip(sae.parameters(), grads, strict=True):
                p.grad = g.clone()
            sae.W_enc.grad[:, idle], sae.b_enc.grad[idle], sae.W_dec.grad[idle] = 0, 0, 0
            if sae is saes[0]:
                reset()
            opt.step()

    step([])  # every latent has momentum now
    before = {name: p.detach().clone() for name, p in saes[0].named_parameters()}
    step([1, 4])
    sae, state = saes[0], opts[0].state
    assert torch.equal(sae.W_enc[:, [1, 4]], before["W_enc"][:, [1, 4]])
    assert torch.equal(sae.W_dec[[1, 4]], before["W_dec"][[1, 4]])
    assert torch.equal(sae.b_enc[[1, 4]], before["b_enc"][[1, 4]])
    assert not state[sae.W_dec]["exp_avg"][[1, 4]].any()
    assert not state[sae.W_enc]["exp_avg"][:, [1, 4]].any()
    moved = {  # per latent: the latents with a gradient moved
        "W_enc": (sae.W_enc != before["W_enc"]).all(0),
        "W_dec": (sae.W_dec != before["W_dec"]).all(1),
        "b_enc": sae.b_enc != before["b_enc"],
    }
    for name, latents in moved.items():
        assert latents.tolist() == [True, False, True, True, False, True], name
    assert (sae.b_dec != before["b_dec"]).all()  # shared by all latents: always a step
    # Plain Adam's momentum moves the idle latents on.
    assert not torch.equal(saes[1].W_dec[[1, 4]], before["W_dec"][[1, 4]])


def test_an_idle_momentum_run_differs_and_an_older_checkpoint_keeps_momentum(
    low_rank_npy, tmp_path, monkeypatch
):
    # 512 latents, k 2, batches of 256: most latents are idle in each batch.
    sparse = dict(features="32x", k=2, adam_basis="standard")
    keep = run(cfg(low_rank_npy, tmp_path / "keep", idle_momentum="keep", **sparse))
    reset = run(cfg(low_rank_npy, tmp_path / "reset", **sparse))
    assert reset.cfg.training["idle_momentum"] == "reset"
    assert not torch.equal(keep.W_dec, reset.W_dec)
    # A checkpoint written before the setting existed (its run kept the momentum) goes on
    # keeping it under the default that now resets it.
    killed = cfg(low_rank_npy, tmp_path / "sae", idle_momentum="keep", **sparse)
    run_killed_at(7, killed, monkeypatch)
    pointer = tmp_path / "sae" / "checkpoint.json"
    saved = json.loads(pointer.read_text())
    del saved["checksum"]  # pointers written before they were sealed had none
    del saved["train_config"]["idle_momentum"], saved["resolved_defaults"]["idle_momentum"]
    pointer.write_text(json.dumps(saved))
    resumed = run(cfg(low_rank_npy, tmp_path / "sae", **sparse))
    for name, value in keep.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name


def test_dead_tracker_counts_tokens_since_firing():
    tracker = DeadLatentTracker(3, window_tokens=100)
    tracker.update(torch.tensor([True, False, False]), 60)
    tracker.update(torch.tensor([False, True, False]), 60)
    assert tracker.tokens_since_fired.tolist() == [60, 0, 120]
    assert tracker.dead_mask.tolist() == [False, False, True]


def test_l0_controller_reaches_the_target_on_a_monotone_response():
    controller = L0Controller(target_l0=20, coefficient=1.0, gain=0.5, smoothing=0.0, max_step=0.1)
    for _ in range(200):
        controller.update(100 / controller.coefficient)  # L0 falls as the penalty rises
    assert controller.coefficient == pytest.approx(5.0, rel=0.02)


@pytest.fixture
def low_rank_npy(tmp_path):
    """[6000, 16] activations from 24 sparse directions: an SAE can learn them."""
    gen = torch.Generator().manual_seed(0)
    dirs = torch.nn.functional.normalize(torch.randn(24, 16, generator=gen), dim=-1)
    codes = torch.rand(6000, 24, generator=gen) * (torch.rand(6000, 24, generator=gen) < 0.15)
    path = tmp_path / "acts.npy"
    np.save(path, (codes @ dirs * 5 + 0.3).numpy())
    return path


def cfg(acts, out, **overrides) -> TrainConfig:
    options = dict(
        acts=str(acts),
        out=str(out),
        arch="topk",
        features="4x",
        k=4,
        batch_size=256,
        tokens=256 * 12,
        checkpoint_every=4,
        log_every=1,
        progress=False,
        dead_window=2048,
    )
    options |= overrides
    if options["arch"] not in ("topk", "batchtopk"):
        del options["k"]  # relu and jumprelu refuse a k
    return TrainConfig(**options)


@pytest.mark.parametrize("arch", ["relu", "topk", "batchtopk", "jumprelu"])
def test_training_lowers_the_loss_and_writes_the_sae(low_rank_npy, tmp_path, arch):
    sae = run(
        cfg(
            low_rank_npy,
            tmp_path / "sae",
            arch=arch,
            tokens=256 * 40,
            lr=3e-3,
            coefficient=None if arch != "relu" else 0.5,
        )
    )
    log = read_log(tmp_path / "sae")
    assert [row["step"] for row in log] == list(range(1, 41))
    assert log[-1]["fvu"] < 0.5 * log[0]["fvu"]
    loaded = load_sae(tmp_path / "sae")
    x = torch.from_numpy(np.load(low_rank_npy)[:64])
    torch.testing.assert_close(loaded(x), sae(x))
    # Saved in the activations' own coordinates (topk trains in a rotated basis).
    rows = torch.from_numpy(np.load(low_rank_npy)[:2048])
    with torch.no_grad():
        saved_fvu = float(fvu(rows, loaded.decode(loaded.encode(rows))))
    assert saved_fvu < 2 * log[-1]["fvu"]
    assert loaded.cfg.training["steps"] == 40 and loaded.cfg.input_scale > 0
    assert not list((tmp_path / "sae").glob("checkpoint*"))
    if arch == "batchtopk":
        # The inference threshold is set from the final weights: k per row on training rows.
        train_rows = torch.from_numpy(np.load(low_rank_npy)[:5700])
        l0 = (loaded.encode(train_rows) != 0).sum(-1).float().mean()
        assert float(l0) == pytest.approx(4, rel=0.05)


def test_the_decoder_learns_at_its_multiple_of_the_rate(low_rank_npy, tmp_path, monkeypatch):
    seen = []
    real_step = torch.optim.Adam.step

    def recording_step(self, *args, **kwargs):
        seen.append([(g["lr"], len(g["params"])) for g in self.param_groups])
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", recording_step)
    config = cfg(low_rank_npy, tmp_path / "sae", lr=1e-3, decoder_lr_multiple=4)
    sae = run(config)
    (lr_rest, n_rest), (lr_dec, n_dec) = seen[6]  # past the warm-up, before the decay
    assert (n_rest, n_dec) == (len(list(sae.parameters())) - 1, 1)
    assert lr_rest == pytest.approx(1e-3) and lr_dec == pytest.approx(4e-3)
    assert sae.cfg.training["decoder_lr_multiple"] == 4


class Killed(Exception):
    pass


def run_killed_at(step: int, config: TrainConfig, monkeypatch) -> None:
    """Run training and kill it as it reaches `step` (after the checkpoints before it)."""
    real_lr = train_run.learning_rate

    def dying_lr(at, *args):
        if at == step:
            raise Killed
        return real_lr(at, *args)

    with monkeypatch.context() as m:
        m.setattr(train_run, "learning_rate", dying_lr)
        with pytest.raises(Killed):
            run(config)


def test_a_killed_run_resumes_bit_identically(low_rank_npy, tmp_path, monkeypatch):
    reference = run(cfg(low_rank_npy, tmp_path / "ref"))
    run_killed_at(7, cfg(low_rank_npy, tmp_path / "sae"), monkeypatch)
    assert json.loads((tmp_path / "sae" / "checkpoint.json").read_text())["step"] == 4
    resumed = run(cfg(low_rank_npy, tmp_path / "sae"))
    for name, value in reference.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name
    assert [row["step"] for row in read_log(tmp_path / "sae")] == list(range(1, 13))
    with pytest.raises(FileExistsError, match="already holds a trained SAE"):
        run(cfg(low_rank_npy, tmp_path / "sae"))
    run(cfg(low_rank_npy, tmp_path / "sae", overwrite=True))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_checkpoints_the_last_step_and_stops(low_rank_npy, tmp_path, monkeypatch, sig):
    reference = run(cfg(low_rank_npy, tmp_path / "ref"))
    handler_before = signal.getsignal(sig)
    real_lr = train_run.learning_rate

    def signalling_lr(at, *args):
        if at == 5:
            os.kill(os.getpid(), sig)  # arrives during step 5 (counting from 0)
        return real_lr(at, *args)

    with monkeypatch.context() as m:
        m.setattr(train_run, "learning_rate", signalling_lr)
        with pytest.raises(TrainingInterrupted, match=f"{sig.name} after step 6 of 12"):
            run(cfg(low_rank_npy, tmp_path / "sae"))
    assert signal.getsignal(sig) is handler_before
    # The step it finished is kept, not only the periodic checkpoint of step 4.
    assert json.loads((tmp_path / "sae" / "checkpoint.json").read_text())["step"] == 6
    resumed = run(cfg(low_rank_npy, tmp_path / "sae"))
    for name, value in reference.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name
    assert [row["step"] for row in read_log(tmp_path / "sae")] == list(range(1, 13))


def test_a_run_in_a_partial_eigenbasis_resumes_bit_identically(low_rank_npy, tmp_path, monkeypatch):
    from monoscope.train import basis

    monkeypatch.setattr(basis, "EIGEN_DIRECTIONS", 4)  # d 16: the two thin products
    reference = run(cfg(low_rank_npy, tmp_path / "ref"))
    run_killed_at(7, cfg(low_rank_npy, tmp_path / "sae"), monkeypatch)
    state = train_run.load_checkpoint(tmp_path / "sae")
    assert state.tensors["rotation.V"].shape == (16, 4) and "rotation.M" in state.tensors
    resumed = run(cfg(low_rank_npy, tmp_path / "sae"))
    for name, value in reference.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name
    standard = run(cfg(low_rank_npy, tmp_path / "std", adam_basis="standard"))
    assert not torch.equal(standard.W_enc, reference.W_enc)  # the basis changes the run
    x = torch.from_numpy(np.load(low_rank_npy)[:2048])
    with torch.no_grad():  # and the saved SAE works in the activations' own coordinates
        assert float(fvu(x, reference.decode(reference.encode(x)))) < 0.5


def test_a_run_is_not_resumed_on_changed_data(low_rank_npy, tmp_path, monkeypatch):
    run_killed_at(7, cfg(low_rank_npy, tmp_path / "sae"), monkeypatch)
    data = np.load(low_rank_npy)
    data[5000, 3] += 1.0  # one value of one row
    np.save(low_rank_npy, data)
    with pytest.raises(ValueError, match="other data"):
        run(cfg(low_rank_npy, tmp_path / "sae"))
    pointer = tmp_path / "sae" / "checkpoint.json"
    pointer.write_text("{bad")
    with pytest.raises(RuntimeError, match=r"checkpoint\.json cannot be read.*--overwrite"):
        run(cfg(low_rank_npy, tmp_path / "sae"))


def test_a_checkpoint_from_before_a_new_setting_still_resumes(low_rank_npy, tmp_path, monkeypatch):
    reference = run(cfg(low_rank_npy, tmp_path / "ref"))
    run_killed_at(7, cfg(low_rank_npy, tmp_path / "sae"), monkeypatch)
    pointer = tmp_path / "sae" / "checkpoint.json"
    saved = json.loads(pointer.read_text())
    del saved["checksum"]  # pointers written before they were sealed had none
    del saved["train_config"]["divergence_fvu"]  # as written before the setting existed
    del saved["train_config"]["weight_average"]
    saved["train_config"]["decay_fraction"] = 0.2  # before "negative means the default"
    pointer.write_text(json.dumps(saved))
    # Not at its default: refused, naming the setting.
    with pytest.raises(ValueError, match=r"other settings \(divergence-fvu: 1000.0 -> 5.0\)"):
        run(cfg(low_rank_npy, tmp_path / "sae", divergence_fvu=5.0))
    resumed = run(cfg(low_rank_npy, tmp_path / "sae"))
    for name, value in reference.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name


def test_a_resumed_run_keeps_the_defaults_it_started_with(low_rank_npy, tmp_path, monkeypatch):
    from dataclasses import replace

    from monoscope.sae import TopKSAE

    reference = run(cfg(low_rank_npy, tmp_path / "ref"))
    run_killed_at(7, cfg(low_rank_npy, tmp_path / "sae"), monkeypatch)
    # A later version with other topk defaults: the run goes on with the ones it began with.
    changed = replace(TopKSAE.training_defaults, lr=0.5, adam_basis="standard")
    monkeypatch.setattr(TopKSAE, "training_defaults", changed)
    resumed = run(cfg(low_rank_npy, tmp_path / "sae"))
    for name, value in reference.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name
    assert resumed.cfg.training["lr"] == 4e-3 and resumed.cfg.training["adam_basis"] == "eigen"


def test_divergence_stops_and_keeps_the_last_checkpoint(low_rank_npy, tmp_path, monkeypatch):
    from monoscope.sae import TopKSAE

    real_step = TopKSAE.training_step
    calls = []

    def poisoned(self, x, *args, **kwargs):
        calls.append(1)
        result = real_step(self, x, *args, **kwargs)
        if len(calls) == 6:
            result.loss = result.loss * float("nan")
        return result

    monkeypatch.setattr(TopKSAE, "training_step", poisoned)
    with pytest.raises(TrainingDivergedError, match=r"at step 5.*last good checkpoint"):
        run(cfg(low_rank_npy, tmp_path / "sae"))
    assert json.loads((tmp_path / "sae" / "checkpoint.json").read_text())["step"] == 4


def test_a_finite_but_exploding_loss_also_stops_the_run(low_rank_npy, tmp_path):
    # lr 1e3: every weight jumps by ~1e3 a step; the loss stays finite but the FVU explodes.
    with pytest.raises(
        TrainingDivergedError,
        match=r"batch FVU became \S+ \(over --divergence-fvu 1000\) at step 1",
    ):
        run(cfg(low_rank_npy, tmp_path / "sae", lr=1e3, checkpoint_every=1))
    assert (tmp_path / "sae" / "checkpoint.json").exists()
    assert not (tmp_path / "sae" / "config.json").exists()  # no SAE claims to be trained
    with pytest.raises(TrainingDivergedError, match="no checkpoint was written yet"):
        run(cfg(low_rank_npy, tmp_path / "early", lr=1e3, checkpoint_every=100))
    # The limit is a setting: off, the same run ends (and writes its poor SAE).
    run(cfg(low_rank_npy, tmp_path / "off", lr=1e3, divergence_fvu=0))
    assert (tmp_path / "off" / "config.json").exists()
    with pytest.raises(ValueError, match="--divergence-fvu must be at least 0"):
        cfg(low_rank_npy, tmp_path / "x", divergence_fvu=-1)


def test_target_l0_steers_relu_sparsity(low_rank_npy, tmp_path):
    # At this fixed coefficient L0 stays near 45-50 (measured); the controller must pull it down.
    options = dict(arch="relu", recipe="paper", tokens=256 * 150, lr=3e-3, coefficient=0.05)
    options |= dict(warmup_fraction=0.0)
    run(cfg(low_rank_npy, tmp_path / "sae", target_l0=25.0, **options))
    late = [row["l0"] for row in read_log(tmp_path / "sae")[-10:]]
    assert 20.0 < sum(late) / len(late) < 32.0
    assert read_log(tmp_path / "sae")[-1]["coefficient"] > 0.15


@pytest.mark.parametrize("arch", ["relu", "jumprelu"])
def test_a_target_l0_run_starts_at_that_l0(low_rank_npy, tmp_path, arch):
    from monoscope.evaluate import fvu
    from monoscope.train.sources import open_source

    source = open_source(low_rank_npy)
    sample = source.sample(2048)
    for target in (0.0, 6.0, 20.0):
        config = cfg(low_rank_npy, tmp_path / "x", arch=arch, target_l0=target)
        sae = new_start(config, source, None).sae
        with torch.no_grad():
            f = sae.encode(sample)
            error = fvu(sample, sae.decode(f))
        l0 = float((f != 0).sum(-1).float().mean())
        if not target:  # the tied start: about half the latents fire
            assert l0 > 0.3 * sae.cfg.n_features
        else:
            assert l0 == pytest.approx(target, rel=0.15)
        if arch == "jumprelu":
            # From the tied start the reconstruction overshoots; at the target L0 the
            # encoder is scaled to the least-squares fit, which beats outputting b_dec.
            assert error > 2.0 if not target else error < 1.0


def test_bad_input_is_refused(low_rank_npy, tmp_path):
    with pytest.raises(ValueError, match="larger than the number of features"):
        run(cfg(low_rank_npy, tmp_path / "a", features="8", k=9))
    bad = tmp_path / "nan.npy"
    data = np.ones((100, 4), dtype=np.float32)
    data[42, 1] = np.nan
    np.save(bad, data)
    with pytest.raises(ValueError, match="row 42"):
        run(cfg(bad, tmp_path / "b"))
    with pytest.raises(ValueError, match="features must be"):
        TrainConfig(features="lots")
    with pytest.raises(ValueError, match="activations not found"):
        run(cfg(tmp_path / "missing.npy", tmp_path / "c"))
    with pytest.raises(ValueError, match="the default --k 32 is larger"):
        run(cfg(low_rank_npy, tmp_path / "a", features="16", k=None))
    with pytest.raises(ValueError, match="--target-l0 20 is larger"):
        run(cfg(low_rank_npy, tmp_path / "a", arch="relu", features="16", target_l0=20))
    assert not (tmp_path / "a").exists()  # refused before the output folder is made
    with pytest.raises(ValueError, match="picks a site of a store"):
        run(cfg(low_rank_npy, tmp_path / "a", site="blocks.0.hook_resid_post"))
    for name, content in [("garbage.npy", b"garbage"), ("empty.npy", b""), ("x.safetensors", b"x")]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=f"{name} cannot be read"):
            run(cfg(tmp_path / name, tmp_path / "d"))
    np.save(tmp_path / "complex.npy", np.ones((600, 4), dtype=np.complex64))
    with pytest.raises(ValueError, match="complex64 values, not real numbers"):
        run(cfg(tmp_path / "complex.npy", tmp_path / "d"))
    np.save(tmp_path / "zeros.npy", np.zeros((600, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="all zero"):
        run(cfg(tmp_path / "zeros.npy", tmp_path / "d"))
    (tmp_path / "afile").write_text("")
    with pytest.raises(FileExistsError, match="is a file"):
        run(cfg(low_rank_npy, tmp_path / "afile"))


def test_an_output_folder_holding_an_sae_of_another_format_is_refused(low_rank_npy, tmp_path):
    from monoscope.sae import convert

    trained = run(cfg(low_rank_npy, tmp_path / "sae"))
    convert(tmp_path / "sae", to="saelens", out=tmp_path / "sl")
    with pytest.raises(FileExistsError, match=r"already holds a trained SAE \(saelens format\)"):
        run(cfg(low_rank_npy, tmp_path / "sl"))
    again = run(cfg(low_rank_npy, tmp_path / "sl", overwrite=True))
    assert sorted(p.name for p in (tmp_path / "sl").iterdir()) == sorted(
        p.name for p in (tmp_path / "sae").iterdir()
    )
    assert torch.equal(again.W_dec, trained.W_dec)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"batch_size": 1}, "--batch-size must be at least 2"),
        ({"log_every": 0}, "--log-every must be at least 1"),
        ({"checkpoint_every": 0}, "--checkpoint-every must be at least 1"),
        ({"dead_window": 0}, "--dead-window must be at least 1"),
        ({"grad_clip": -1.0}, "--grad-clip must be at least 0"),
        ({"decay_fraction": 2.0}, r"--decay-fraction must be in \[0, 1\]"),
        ({"weight_average": 1.5}, r"--weight-average must be in \[0, 1\]"),
        ({"arch": "relu", "weight_average": 0.2}, "--weight-average applies to topk and batchtopk"),
        ({"warmup_fraction": -1.0}, r"--warmup-fraction must be in \[0, 1\]"),
        ({"outlier_multiple": 0.5}, "--outlier-multiple must be 0"),
        ({"decoder_init_power": 100.0}, r"--decoder-init-power must be in \[0, 1\]"),
        ({"decoder_init_power": -1.0}, r"--decoder-init-power must be in \[0, 1\]"),
        ({"b_enc_init_share": 1.5}, r"--b-enc-init-share must be in \[0, 1\]"),
        ({"arch": "relu", "b_enc_init_share": 0.25}, "--b-enc-init-share applies to topk"),
        ({"arch": "batchtopk", "target_l0": 8.0}, "batchtopk sets L0 with --k"),
        ({"refit_decoder": -0.1}, "--refit-decoder must be at least 0"),
        (
            {"refit_decoder": 0.01, "stream_model": "m", "site": "s", "tokens": 10},
            "--refit-decoder needs a second pass",
        ),
    ],
)
def test_bad_settings_are_refused_naming_the_flag(option, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**option)


def assert_batches_are_the_consumers_own(source) -> None:
    """The trainer writes over an epoch's batches (it rotates them in place): that must change
    neither the batches still to come nor a later epoch."""
    first = [batch.clone() for batch in source.epoch(256, seed=0, max_norm=None)]
    assert first
    for expected, batch in zip(first, source.epoch(256, seed=0, max_norm=None), strict=True):
        assert torch.equal(batch, expected)
        batch.fill_(float("nan"))
    again = source.epoch(256, seed=0, max_norm=None)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))


def test_an_array_sources_batches_are_the_consumers_own(low_rank_npy):
    assert_batches_are_the_consumers_own(open_source(low_rank_npy))


def test_trains_from_an_activation_store(tiny_llama, corpus_file, tmp_path):
    from monoscope.harvest import HarvestConfig
    from monoscope.harvest import run as harvest

    harvest(
        HarvestConfig(
            sites=["blocks.1.hook_resid_post", "blocks.0.hook_mlp_out"],
            corpus=str(corpus_file),
            tokens=3000,
            out=str(tmp_path / "acts"),
            context=32,
            progress=False,
        ),
        tiny_llama,
    )
    with pytest.raises(ValueError, match="several sites"):
        run(cfg(tmp_path / "acts", tmp_path / "sae"))
    sae = run(
        cfg(tmp_path / "acts", tmp_path / "sae", site="blocks.1.hook_resid_post", tokens=256 * 6)
    )
    assert sae.cfg.site == "blocks.1.hook_resid_post" and sae.cfg.d_in == 32
    assert sae.cfg.model == tiny_llama.name
    assert_batches_are_the_consumers_own(open_source(tmp_path / "acts", sae.cfg.site))


def test_streaming_from_the_model_trains_and_resumes_exactly(
    tiny_model_dirs, corpus_file, tmp_path, monkeypatch
):
    options = dict(
        stream_model=str(tiny_model_dirs["gpt2"]),
        site="blocks.1.hook_resid_post",
        corpus=str(corpus_file),
        context=32,
        tokens=256 * 8,
    )
    with pytest.raises(ValueError, match="pass --tokens"):
        run(cfg("unused", tmp_path / "x", **{**options, "tokens": 0}))
    from monoscope.models.language_model import LanguageModel

    forwards = []  # the contexts of each forward batch
    real_capture = LanguageModel.capture

    def counted_capture(self, tokens, *args, **kwargs):
        forwards.append(tuple(tuple(row) for row in tokens.tolist()))
        return real_capture(self, tokens, *args, **kwargs)

    monkeypatch.setattr(LanguageModel, "capture", counted_capture)
    reference = run(cfg("unused", tmp_path / "ref", **options))
    assert reference.cfg.d_in == 32 and reference.cfg.site == "blocks.1.hook_resid_post"
    # A short run harvests about what it trains on (plus the normalisation sample), not a
    # whole default shuffle buffer of 131k tokens; and the sample's contexts, which the
    # epoch starts with, are not run through the model a second time.
    assert sum(len(batch) for batch in forwards) * 32 < 4 * options["tokens"] + 16_384
    assert len(set(forwards)) == len(forwards)
    monkeypatch.setattr(LanguageModel, "capture", real_capture)
    run_killed_at(6, cfg("unused", tmp_path / "sae", **options), monkeypatch)
    resumed = run(cfg("unused", tmp_path / "sae", **options))
    for name, value in reference.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name
    source = ModelSource(
        options["stream_model"],
        options["site"],
        options["corpus"],
        context=32,
        buffer_tokens=1024,
    )
    source.sample(300)  # as the trainer does: the epoch then starts with the sample's batches
    assert_batches_are_the_consumers_own(source)


def test_tensorboard_logging_writes_the_metrics(low_rank_npy, tmp_path):
    pytest.importorskip("tensorboard", reason="pip install 'monoscope[tensorboard]'")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run(cfg(low_rank_npy, tmp_path / "sae", logger="tensorboard", tokens=256 * 3))
    events = EventAccumulator(str(tmp_path / "sae" / "tensorboard"))
    events.Reload()
    fvu = [(e.step, e.value) for e in events.Scalars("fvu")]
    logged = [(row["step"], row["fvu"]) for row in read_log(tmp_path / "sae")]
    assert [step for step, _ in fvu] == [1, 2, 3]
    assert [v for _, v in fvu] == pytest.approx([v for _, v in logged])
    assert {"loss", "l0", "dead_fraction", "lr"} <= set(events.Tags()["scalars"])


def test_wandb_logging_offline(low_rank_npy, tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="pip install 'monoscope[wandb]'")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logged = []
    import wandb

    real_init = wandb.init

    def recording_init(*args, **kwargs):
        wandb_run = real_init(*args, **kwargs)
        real_log = wandb_run.log
        monkeypatch.setattr(
            wandb_run, "log", lambda data, step: (logged.append(step), real_log(data, step=step))
        )
        return wandb_run

    monkeypatch.setattr(wandb, "init", recording_init)
    run(cfg(low_rank_npy, tmp_path / "sae", logger="wandb", tokens=256 * 3))
    assert logged == [1, 2, 3]
    assert list((tmp_path / "sae" / "wandb").glob("offline-run-*/run-*.wandb"))


@pytest.mark.parametrize("backend", ["wandb", "tensorboard"])
def test_a_missing_logging_backend_names_its_extra(low_rank_npy, tmp_path, monkeypatch, backend):
    import sys

    monkeypatch.setitem(sys.modules, backend, None)  # import fails as if not installed
    with pytest.raises(ImportError, match=rf"pip install 'monoscope\[{backend}\]'"):
        run(cfg(low_rank_npy, tmp_path / "sae", logger=backend))
    assert not (tmp_path / "sae").exists()  # refused before anything was written


def test_large_blocks_go_back_to_the_system_when_freed():
    import platform

    from monoscope.train.memory import return_large_blocks_when_freed

    expected = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert return_large_blocks_when_freed() is expected


def test_b_dec_starts_where_the_config_says(low_rank_npy, tmp_path):
    from monoscope.train.sources import open_source

    source = open_source(low_rank_npy)
    for arch, b_dec_init, moved in [
        ("relu", None, True),  # the default recipe's median (the paper's: zero)
        ("relu", "zero", False),
        ("topk", None, True),
    ]:
        config = cfg(low_rank_npy, tmp_path / "x", arch=arch, b_dec_init=b_dec_init)
        sae = new_start(config, source, None).sae
        assert bool(sae.b_dec.abs().sum() > 0) is moved, (arch, b_dec_init)
    with pytest.raises(ValueError, match="--b-dec-init must be median or zero"):
        TrainConfig(b_dec_init="mean")


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "relu", "jumprelu"])
def test_the_decoder_refit_is_the_least_squares_decoder_of_the_codes(arch, monkeypatch):
    monkeypatch.setattr(refit_module, "_ROWS", 256)  # codes kept in blocks of 256 tokens
    torch.manual_seed(0)
    k = 4 if arch in ("topk", "batchtopk") else None
    sae = build_sae(SAEConfig(arch, 16, 64, k=k, input_scale=0.5), seed=0)
    with torch.no_grad():
        sae.b_dec.normal_()
    if arch == "batchtopk":
        sae.cfg.batchtopk_threshold = 0.3  # inference codes: a varying number per row
    x = torch.randn(3000, 16) * 2
    sae.eval()
    with torch.no_grad():
        # relu: the codes before the reporting convention's decoder-norm factor
        codes = sae.decoder_codes(x)
        assert 0 < float((codes > 0).float().mean()) < 0.9  # sparse, not empty
        trained = sae.W_dec.clone()
        target = (sae.normalise(x) - sae.b_dec).double()
        z = codes.double()
        gram = z.T @ z
        strength = 0.01 * float(gram.diagonal().mean())
        expected = torch.linalg.solve(
            gram + strength * torch.eye(64, dtype=torch.float64), z.T @ target + strength * trained
        )

        def loss(W):  # what the refit minimises: squared error + ridge
            W = W.double()
            return float(((target - z @ W) ** 2).sum() + strength * ((W - trained) ** 2).sum())

        before = float(fvu(x, sae(x)))
        refit = refit_decoder(sae, x.split(700), 0.01, tolerance=1e-12)
        assert refit.rows == 3000 and refit.iterations > 1
        # Conjugate gradients in float32: the exact solution's loss, the rows within rounding.
        assert loss(sae.W_dec) <= loss(expected) * (1 + 1e-8)
        torch.testing.assert_close(sae.W_dec, expected.float(), rtol=1e-3, atol=3e-4)
        assert torch.equal(sae.decoder_codes(x), codes)  # the codes (L0, dead latents) stay
        after = float(fvu(x, sae(x)))
        assert after < before
        # The reported training FVU before, and the loss after (FVU + ridge, >= the FVU).
        assert refit.fvu_before == pytest.approx(before, rel=1e-4)
        assert after <= refit.loss_after + 1e-6 < before


def test_the_refit_stops_at_its_tolerance():
    """A loose tolerance stops early, short of the solution but below the trained decoder."""
    torch.manual_seed(0)
    x = torch.randn(2000, 16)
    fits = {}
    for tolerance in (1e-2, 1e-9):
        sae = build_sae(SAEConfig("topk", 16, 64, k=4), seed=0)
        fits[tolerance] = refit_decoder(sae, x.split(500), 0.01, tolerance=tolerance)
    loose, tight = fits[1e-2], fits[1e-9]
    assert loose.iterations < tight.iterations
    assert tight.loss_after <= loose.loss_after < loose.fvu_before


def test_a_run_with_a_decoder_refit_saves_the_refitted_decoder(low_rank_npy, tmp_path):
    plain = run(cfg(low_rank_npy, tmp_path / "plain"))
    refitted = run(cfg(low_rank_npy, tmp_path / "refit", refit_decoder=0.01))
    # Same training, then the refit: same encoder and codes, another decoder.
    torch.testing.assert_close(refitted.W_enc, plain.W_enc)
    assert not torch.allclose(refitted.W_dec, plain.W_dec)
    loaded = load_sae(tmp_path / "refit")
    assert loaded.cfg.training["refit_decoder"] == 0.01
    assert loaded.cfg.training["refit"]["iterations"] > 0
    rows = torch.from_numpy(np.load(low_rank_npy)[:5000])
    with torch.no_grad():
        assert fvu(rows, loaded(rows)) < fvu(rows, plain(rows))


def test_a_run_killed_in_the_refit_resumes_at_the_refit(low_rank_npy, tmp_path, monkeypatch):
    reference = run(cfg(low_rank_npy, tmp_path / "ref", refit_decoder=0.01))
    real_refit, steps = train_run.refit_decoder, []

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_run, "refit_decoder", killed)
    with pytest.raises(KeyboardInterrupt):
        run(cfg(low_rank_npy, tmp_path / "sae", refit_decoder=0.01))
    assert train_run.load_checkpoint(tmp_path / "sae").step == 12  # every step kept
    monkeypatch.setattr(train_run, "refit_decoder", real_refit)
    real_apply = train_run.apply_gradients
    monkeypatch.setattr(
        train_run, "apply_gradients", lambda *a, **k: steps.append(1) or real_apply(*a, **k)
    )
    resumed = run(cfg(low_rank_npy, tmp_path / "sae", refit_decoder=0.01))
    assert not steps  # nothing trained again: only the refit ran
    for name, value in reference.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name
    assert not (tmp_path / "sae" / "checkpoint.json").exists()


def test_a_decoder_refit_too_large_is_refused_before_training(low_rank_npy, tmp_path, monkeypatch):
    monkeypatch.setattr(refit_module, "_available_memory", lambda: 10_000)
    with pytest.raises(ValueError, match=r"3,072 tokens at ~4 codes each need ~0 MiB, more than"):
        run(cfg(low_rank_npy, tmp_path / "sae", refit_decoder=0.01))
    assert not (tmp_path / "sae" / "checkpoint.json").exists()


def test_a_copied_data_file_and_a_moved_run_folder_resume(low_rank_npy, tmp_path, monkeypatch):
    """The data is identified by its content, not its path (issue 22, point 2)."""
    reference = run(cfg(low_rank_npy, tmp_path / "ref"))
    run_killed_at(7, cfg(low_rank_npy, tmp_path / "sae"), monkeypatch)
    copy = tmp_path / "elsewhere" / "copy.npy"
    copy.parent.mkdir()
    shutil.copy(low_rank_npy, copy)
    (tmp_path / "sae").rename(tmp_path / "moved")
    resumed = run(cfg(copy, tmp_path / "moved"))
    for name, value in reference.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name


def test_the_trainer_holds_no_per_architecture_branches():
    """What differs by architecture is declared on the SAE classes (monoscope/sae/training.py)."""
    import re
    from pathlib import Path

    from monoscope.train import trainer

    for path in Path(trainer.__file__).parent.glob("*.py"):
        text = path.read_text()
        assert not re.search(r"\barch\s*(==|!=|\bin\b|\bnot in\b)\s*[(\"'A-Z]", text), path
        assert not re.search(r"isinstance\([^)]*(TopK|Relu|ReLU|JumpReLU|Neuron)", text), path
        assert not re.search(r"def \w+_value\(", text), path  # no sentinel resolvers


def test_the_cli_offers_the_registered_architectures():
    from monoscope.cli import build_parser
    from monoscope.sae.registry import ARCHITECTURES

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    arch = next(a for a in train._actions if a.dest == "arch")
    assert tuple(arch.choices) == ARCHITECTURES
    lr = next(a for a in train._actions if a.dest == "lr")
    assert lr.default is None and "topk 0.004" in lr.help  # each architecture's default shown


@pytest.mark.parametrize("arch", ["topk", "relu"])
def test_a_checkpoint_of_the_version_before_none_defaults_resumes(
    low_rank_npy, tmp_path, monkeypatch, arch
):
    """Checkpoints written when 0, a negative number or '' meant 'the default' resume
    bit-identically, their settings compared as the defaults they meant."""
    options = {"arch": arch, "target_l0": 6.0} if arch == "relu" else {"arch": arch}
    reference = run(cfg(low_rank_npy, tmp_path / "ref", **options))
    run_killed_at(7, cfg(low_rank_npy, tmp_path / "sae", **options), monkeypatch)
    pointer = tmp_path / "sae" / "checkpoint.json"
    saved = json.loads(pointer.read_text())
    del saved["checksum"]  # pointers written before they were sealed had none
    legacy = {"lr": 0.0, "decoder_lr_multiple": 0.0, "adam_beta1": 0.0, "coefficient": -1.0}
    legacy |= {"decoder_init_power": -1.0, "b_enc_init_share": -1.0, "decay_fraction": -1.0}
    legacy |= {"lr_warmup_fraction": -1.0, "adam_basis": "", "idle_momentum": "", "b_dec_init": ""}
    if arch == "relu":
        legacy["k"] = 0
        saved["resolved_defaults"]["k"] = 0  # recorded so for relu then
    saved["train_config"] |= legacy
    pointer.write_text(json.dumps(saved))
    resumed = run(cfg(low_rank_npy, tmp_path / "sae", **options))
    for name, value in reference.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name
