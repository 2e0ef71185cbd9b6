"""`monoscope plan` and `check_fits`: sizes as written, the memory of a step against a real SAE
and optimizer, the store's size against a real harvest, the fit and its advice, the time from a
given throughput and from a measurement, and the command's output."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch

from monoscope import cli
from monoscope.config_args import config_from_args
from monoscope.models import load_model
from monoscope.models.builtin import BUILTIN_MODELS
from monoscope.models.hub import ModelNotFoundError
from monoscope.models.sites import UnknownSiteError
from monoscope.plan import (
    DoesNotFitError,
    PlanConfig,
    check_fits,
    check_gather_fits,
    format_plan,
    run,
)
from monoscope.plan import fit as fit_module
from monoscope.plan import runner as runner_module
from monoscope.plan.fit import available_ram, required, suggestions, usable
from monoscope.plan.memory import StepShape, memory_plan, selection_buffer
from monoscope.plan.sizes import GIB, parse_memory, parse_size
from monoscope.plan.store import SHARD_OVERHEAD, row_bytes, store_bytes
from monoscope.plan.throughput import ADAM_PASSES, Rates, step_time
from monoscope.plan.width import BUILTIN_SHAPES, site_width
from monoscope.sae import SAEConfig
from monoscope.sae.build import build_sae, empty_sae
from monoscope.sae.step_memory import StepMemory
from monoscope.testing import TINY_FAMILIES, harvest_tiny

# --- sizes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [("34M", 34_000_000), ("16k", 16_000), ("8B", 8_000_000_000), ("1.5M", 1_500_000),
     ("4096", 4096), ("1e6", 1_000_000)],
)  # fmt: skip
def test_counts_take_k_m_b_suffixes(text, value):
    assert parse_size(text, "--features") == value


def test_a_bad_count_names_its_flag():
    with pytest.raises(ValueError, match=r"--features: not a count: '12q'"):
        parse_size("12q", "--features")


@pytest.mark.parametrize("text", ["80G", "80GB", "80GiB", "80 gib", "81920M"])
def test_memory_units_are_binary_whatever_the_spelling(text):
    assert parse_memory(text) == 80 * GIB


@pytest.mark.parametrize("text", ["80", "80X", "G80", ""])
def test_a_memory_size_needs_a_unit(text):
    with pytest.raises(ValueError, match="--gpu-mem: not a memory size"):
        parse_memory(text)


def test_the_command_line_reads_sizes_as_written():
    args = cli.build_parser().parse_args(
        ["plan", "--features", "1.5M", "--tokens", "8B", "--gpus", "8", "--gpu-mem", "80GB"]
    )
    cfg = config_from_args(PlanConfig, args)
    assert (cfg.n_features(576), cfg.tokens, cfg.gpus) == (1_500_000, 8_000_000_000, 8)
    assert PlanConfig(features="16x").n_features(576) == 16 * 576


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"gpus": 0}, "--gpus must be at least 1"),
        ({"batch_size": 1}, "--batch-size must be at least 2"),
        ({"features": "0x"}, "--features must be a count"),
        ({"gpu_mem": "lots"}, "--gpu-mem: not a memory size"),
        ({"tokens_per_s": 0.0}, "--tokens-per-s must be positive"),
        ({"arch": "relu"}, "the plan models the TopK family's step"),
        ({"store_dtype": "int3"}, "unknown dtype"),
    ],
)
def test_config_refuses_bad_values_naming_the_flag(options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        PlanConfig(**options)


# --- the width d ---------------------------------------------------------------------------


def test_builtin_width_without_loading_and_d_model_wins():
    assert site_width("smollm2-135m", "blocks.15.hook_resid_post").d == 576
    assert site_width("smollm2-135m", "blocks.3.mlp.hook_post").d == 1536
    assert site_width("not/read", "blocks.99.hook_resid_post", d_model=4096).d == 4096
    assert set(BUILTIN_SHAPES) == set(BUILTIN_MODELS)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_a_folder_config_gives_the_width_the_loaded_model_has(tiny_model_dirs, family):
    folder = str(tiny_model_dirs[family])
    widths = load_model(folder, device="cpu").sites()
    for site in ("blocks.1.hook_resid_post", "blocks.1.mlp.hook_post"):
        assert site_width(folder, site).d == widths[site], site


def test_site_form_and_layer_are_checked():
    with pytest.raises(UnknownSiteError, match=r"layer 30 out of range, smollm2-135m has"):
        site_width("smollm2-135m", "blocks.30.hook_resid_post")
    with pytest.raises(UnknownSiteError, match=r"unknown site 'blocks.1.resid': sites are"):
        site_width("smollm2-135m", "blocks.1.resid", d_model=64)


def test_an_unreadable_model_suggests_d_model(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelNotFoundError, match=r"cannot read org/absent's config .*--d-model"):
        site_width("org/absent", "blocks.1.hook_resid_post")


# --- memory --------------------------------------------------------------------------------

D, F, K = 64, 16_384, 8


def test_weights_adam_and_gradients_match_a_real_topk_sae_and_its_optimizer():
    """The trainer's own parts, measured: the parameters' bytes, Adam's state after a step,
    and the gradients alive after a TopK training step under a StepMemory (W_enc's deferred)."""
    sae = build_sae(SAEConfig("topk", d_in=D, n_features=F, k=K))
    plan = memory_plan(StepShape(F, D, 256, K))
    params = list(sae.parameters())
    assert sum(p.numel() * p.element_size() for p in params) == plan.part("weights")

    sae.step_memory = StepMemory()
    result = sae.training_step(torch.randn(256, D))
    result.loss.backward()
    assert sae.W_enc.grad is None and len(result.deferred) == 1  # formed after W_dec's step
    alive = sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None)
    assert alive == plan.part("gradients")

    adam = torch.optim.Adam(params, fused=True)
    for p in params:  # every parameter steps once (W_enc's gradient is formed later)
        p.grad = torch.zeros_like(p)
    adam.step()
    state = [t for s in adam.state.values() for t in s.values() if t.dim() > 0]
    assert sum(t.numel() * t.element_size() for t in state) == plan.part("adam")


@pytest.mark.parametrize("compute_dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize(
    ("n_features", "d", "rows"),
    [(16_384, 64, 256), (9216, 576, 4096), (9216, 8, 100), (1000, 64, 512), (1152 * 29, 32, 2)],
)
def test_the_selection_buffer_is_the_trainers(n_features, d, rows, compute_dtype):
    with torch.device("meta"):  # the trainer's layout, without the weights' memory
        sae = empty_sae(
            SAEConfig("topk", d_in=d, n_features=n_features, k=4, compute_dtype=compute_dtype)
        )
    shape = StepShape(n_features, d, rows, 4, compute_dtype=compute_dtype)
    assert -(-selection_buffer(shape) // 4) == sae._workspace_size(rows)
    workspace = memory_plan(shape).part("workspace")
    assert workspace == 4 * max(sae._workspace_size(rows), rows * d)


def test_a_width_with_a_divisor_near_the_column_block_keeps_the_workspace_at_the_residual():
    for n_features in (1152 * 100, 2**20, 2**25):  # the paper's 1M and 34M: blocks of 1024
        fits = memory_plan(StepShape(n_features, 576, 4096, 32))
        assert fits.part("workspace") == fits.residual, n_features
    wide = memory_plan(StepShape(1152 * 100 + 1, 576, 4096, 32))
    assert wide.part("workspace") == 4 * 256 * (1152 * 100 + 1)


def test_sharding_divides_the_dictionary_and_data_parallel_the_batch():
    one = memory_plan(StepShape(1_000_000, 2048, 4096, 32))
    dp = memory_plan(StepShape(1_000_000, 2048, 4096, 32, world_size=4))
    sharded = memory_plan(StepShape(1_000_000, 2048, 4096, 32, world_size=4, shard_features=True))
    assert dp.part("weights") == one.part("weights")
    assert dp.part("batch") * 4 == one.part("batch")
    assert sharded.part("adam") == 2 * 4 * (2 * 2048 * 250_000 + 250_000 + 2048)
    assert sharded.part("batch") == one.part("batch")
    assert sharded.part("gathered") == 4096 * 4 * 32 * 12 + 4 * 4096 * 2048
    assert sharded.peak < 0.3 * one.peak
    assert dp.dense_preactivations == 1024 * 1_000_000 * 4


# --- fit -----------------------------------------------------------------------------------


def test_check_fits_passes_a_small_sae_on_this_machine():
    plan = check_fits(F, D, 256, torch.device("cpu"))
    assert plan.peak < available_ram()


def test_check_fits_refuses_on_a_gpu_with_the_need_the_memory_and_the_fixes(monkeypatch):
    monkeypatch.setattr(fit_module, "device_memory", lambda device: (80 * GIB, "H100's memory"))
    with pytest.raises(DoesNotFitError) as err:
        check_fits(34_000_000, 4096, 4096, torch.device("cuda"), world_size=8)
    message = str(err.value)
    assert re.fullmatch(
        r"a topk SAE of 34,000,000 features x d 4,096 at batch 4,096 needs [\d,.]+ GiB per rank "
        r"\(dictionary on every rank\), the device cuda has 80.0 GiB \(H100's memory; 10% kept "
        r"free\): use --shard-features --nproc \d+ \([\d.]+ GiB per rank\) or --features .*",
        message,
    ), message


def test_check_fits_on_the_cpu_counts_the_ranks_sharing_its_ram(monkeypatch):
    shape = StepShape(147_456, 576, 4096, 32, world_size=2)
    need = required(memory_plan(shape))  # a rank's, its half of each batch
    monkeypatch.setattr(fit_module, "available_ram", lambda: int(1.5 * need / 0.9))
    with pytest.raises(DoesNotFitError) as err:
        check_fits(147_456, 576, 4096, torch.device("cpu"), world_size=2)
    message = str(err.value)
    assert "(available RAM, 2 ranks sharing it; 10% kept free): use --shard-features (" in message
    assert "--nproc" not in message  # more processes on one machine share the same RAM
    check_fits(147_456, 576, 2048, torch.device("cpu"))  # one rank of the same size fits


def test_check_fits_bounds_architectures_it_does_not_model_from_below(monkeypatch):
    monkeypatch.setattr(fit_module, "available_ram", lambda: 8 * GIB)
    with pytest.raises(DoesNotFitError, match=r"relu SAE .* needs at least [\d.]+ GiB per rank"):
        check_fits(2_000_000, 576, 4096, torch.device("cpu"), arch="relu")
    check_fits(16_384, 576, 4096, torch.device("cpu"), arch="relu")


def test_each_suggestion_fits_and_the_ranks_are_the_fewest():
    shape = StepShape(4_000_000, 2048, 4096, 32, world_size=2)
    budget = usable(80 * GIB)
    fixes = suggestions(shape, budget)
    ranks = int(re.search(r"--shard-features --gpus (\d+)", fixes[0]).group(1))
    sharded = dataclasses.replace(shape, shard_features=True)
    assert required(memory_plan(dataclasses.replace(sharded, world_size=ranks))) <= budget
    assert required(memory_plan(dataclasses.replace(sharded, world_size=ranks - 1))) > budget
    features = int(re.search(r"--features ([\d,]+)", fixes[-1]).group(1).replace(",", ""))
    assert required(memory_plan(dataclasses.replace(shape, n_features=features))) <= budget
    assert features % 1152 == 0


def test_auxk_forms_a_whole_w_dec_gradient_which_the_plan_counts(monkeypatch):
    """While latents are dead, AuxK's W_dec gradient is an [F, d] tensor of its own (memory.py's
    note): if a change made it go into the step's gradient memory, the plan would overcount."""
    from monoscope.sae import sparse

    formed = []
    bags = sparse._bags

    def recording(*args):
        out = bags(*args)
        formed.append(tuple(out.shape))
        return out

    sae = build_sae(SAEConfig("topk", d_in=D, n_features=4096, k=K))
    sae.step_memory = StepMemory()
    result = sae.training_step(torch.randn(256, D), dead_mask=torch.ones(4096, dtype=torch.bool))
    monkeypatch.setattr(sparse, "_bags", recording)
    result.loss.backward()
    assert (4096, D) in formed
    assert memory_plan(StepShape(4096, D, 256, K)).part("auxk") == 4096 * D * 4


def test_a_checkpoint_is_the_weights_and_adam_and_adds_nothing_to_the_step():
    plan = memory_plan(StepShape(F, D, 256, K))
    assert plan.checkpoint == 3 * plan.part("weights")
    assert required(plan) == plan.peak


# --- store ---------------------------------------------------------------------------------


def test_store_size_matches_a_real_harvest(tiny_llama, corpus_file, tmp_path):
    store = harvest_tiny(
        tiny_llama, corpus_file, tmp_path / "acts", "blocks.1.hook_resid_post",
        tokens=2000, dtype="bfloat16", shard_tokens=512,
    )  # fmt: skip
    shards = store.manifest["shards"]
    on_disk = sum(s["bytes"] for s in shards)
    rows, _ = store_bytes(store.n_tokens, tiny_llama.d_model, "bfloat16", shard_tokens=512)
    assert rows == store.n_tokens * row_bytes(tiny_llama.d_model, "bfloat16")
    assert rows < on_disk <= rows + len(shards) * SHARD_OVERHEAD


# --- time ----------------------------------------------------------------------------------


def test_step_time_prices_each_part_by_its_formula():
    rates = Rates("cpu", "float32", (1, 1, 1), 1e12, 1, 1e-9)
    shape = StepShape(1_000_000, 2048, 4096, 32, world_size=4)
    step = step_time(shape, rates, 50e9)
    params = 2 * 2048 * 1_000_000 + 1_000_000 + 2048
    assert step.matmul == pytest.approx(2 * 1024 * 2048 * 1_000_000 / 1e12)
    assert step.sparse == pytest.approx(8 * 32 * 2048 * 1024 / 1e12)
    assert step.optimizer == pytest.approx(ADAM_PASSES * params * 1e-9)
    assert step.communication_bytes == 2 * 3 * 4 * params // 4
    assert step.total == pytest.approx(
        step.matmul + step.sparse + step.optimizer + step.communication_bytes / 50e9
    )


def test_a_given_throughput_is_used_and_nothing_measured(monkeypatch):
    def no_measuring(*args):
        raise AssertionError("measured although --tokens-per-s was given")

    monkeypatch.setattr(runner_module, "measure", no_measuring)
    plan = run(PlanConfig(d_model=576, features="16k", tokens=8_000_000_000, tokens_per_s=1e6))
    assert plan.time.seconds == 8000 and plan.time.rates is None


def test_the_measured_path_times_a_scaled_down_matmul_on_this_device():
    cfg = PlanConfig(d_model=64, features="4096", tokens=10**6, device="cpu", measure_seconds=0.01)
    plan = run(cfg)
    rates, step = plan.time.rates, plan.time.step
    assert rates is not None and step is not None
    assert rates.device == "cpu" and rates.matmul_shape == (1024, 64, 2048)
    assert rates.matmul_flops > 0 and rates.adam_seconds_per_parameter > 0
    assert step.matmul == pytest.approx(2 * 4096 * 64 * 4096 / rates.matmul_flops)
    assert plan.time.seconds == pytest.approx(10**6 / plan.time.tokens_per_s)
    assert plan.time.tokens_per_s == pytest.approx(4096 / step.total)
    assert "from rates measured here on cpu" in format_plan(plan)


# --- the command ---------------------------------------------------------------------------


def test_the_command_prints_every_part(capsys):
    argv = ["plan", "--site", "blocks.15.hook_resid_post", "--features", "34M", "--tokens",
            "8B", "--gpus", "8", "--gpu-mem", "80G", "--d-model", "4096", "--tokens-per-s",
            "1e6"]  # fmt: skip
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    for expected in [
        "34,000,000 features (34M) x d 4,096 (--d-model)",
        "weights (W_enc, W_dec, b_enc, b_dec; float32)",
        "Adam's two moments",
        "gradients (one weight gradient at a time",
        "batch [rows, d]",
        "step workspace",
        "peak: the trainer's blocked TopK step",
        "peak with a dense GPU encoder",
        "all-gathered candidates",
        "activation store (bfloat16, one site): 8,000,000,000 tokens x (4,096 x 2 B",
        "time (an estimate): 2.22 h for 8B tokens at 1,000,000 tokens/s",
        "fit in 80.0 GiB a GPU (--gpu-mem; 90% usable: 72.0 GiB): NO",
        "to fit, change one: --shard-features --gpus",
    ]:
        assert expected in out, expected
    weights = 4 * (2 * 4096 * 34_000_000 + 34_000_000 + 4096) / GIB
    assert f"{weights:,.1f} GiB" in out
    # Process 0 of a sharded run gathers the whole SAE once, to write it.
    assert re.search(rf"host RAM of process 0: .* - +{weights:,.1f} GiB", out)


def test_the_command_says_when_it_fits(capsys):
    argv = ["plan", "--features", "16k", "--tokens", "1M", "--gpu-mem", "80G", "--tokens-per-s",
            "1e5"]  # fmt: skip
    assert cli.main(argv) == 0
    assert "GiB): yes, the step needs" in capsys.readouterr().out


def test_the_command_errors_in_one_line(capsys):
    assert cli.main(["plan", "--site", "blocks.30.hook_resid_post", "--tokens-per-s", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "monoscope plan: error: site 'blocks.30.hook_resid_post': layer 30 out of range, "
        "smollm2-135m has layers 0..29"
    )


def test_more_active_latents_than_features_is_refused():
    with pytest.raises(ValueError, match="--k 64 is larger than the number of features 32"):
        run(PlanConfig(d_model=8, features="32", k=64, tokens_per_s=1.0))


def test_a_sharded_run_whose_whole_sae_process_0_cannot_hold_is_refused(monkeypatch):
    monkeypatch.setattr(fit_module, "available_ram", lambda: 4 * GIB)
    # 2^20 x 576: 4.5 GiB of weights, gathered once to be written.
    with pytest.raises(DoesNotFitError, match=r"process 0's RAM .*: 4\.5 GiB, .* 4\.0 GiB"):
        check_gather_fits(1 << 20, 576)
    assert check_gather_fits(1 << 16, 576) == 4 * (2 * (1 << 16) * 576 + (1 << 16) + 576)
