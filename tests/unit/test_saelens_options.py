"""Every option SAELens 6 writes in cfg.json loads exactly: each folder is written by the test,
and encode / reconstruction are checked against SAELens' inference written here from its
definitions (sae_lens/saes/*.py). The real library's tier is tests/interop/test_saelens_real.py.
"""

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from monoscope.sae import SAEConfig, SAEFormatError, build_sae, export_saelens, load_sae
from monoscope.sae.batchtopk import BatchTopKSAE
from monoscope.sae.gated import GatedSAE
from monoscope.sae.jumprelu import JumpReLUSAE
from monoscope.sae.topk import TopKSAE

D, F, K = 12, 40, 4


def rows(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 2.0 * torch.randn(n, D, generator=g, dtype=torch.float64).float() + 0.5


def weights(arch, seed=3):
    """Random SAELens tensors for `arch`, decoder rows of uneven norms."""
    g = torch.Generator().manual_seed(seed)
    w = {
        "W_enc": torch.randn(D, F, generator=g) * 0.4,
        "b_enc": torch.randn(F, generator=g) * 0.2,
        "W_dec": torch.randn(F, D, generator=g) * (0.2 + 2 * torch.rand(F, 1, generator=g)),
        "b_dec": torch.randn(D, generator=g) * 0.3,
    }
    if arch in ("jumprelu", "jumprelu_transcoder", "jumprelu_skip_transcoder"):
        w["threshold"] = torch.rand(F, generator=g) * 0.6 - 0.1  # some <= 0: act as 0
    if arch == "gated":
        w["b_gate"] = w.pop("b_enc")
        w["r_mag"] = torch.randn(F, generator=g) * 0.3
        w["b_mag"] = torch.randn(F, generator=g) * 0.2
    if arch in ("batchtopk", "matryoshka_batchtopk"):
        w["topk_threshold"] = torch.tensor(0.35, dtype=torch.float64)
    if "skip" in arch:
        w["W_skip"] = torch.randn(D, D, generator=g) * 0.1
    return w


def write(folder, arch="standard", w=None, metadata=None, **cfg_fields):
    """A folder as SAELens 6 `save_model` / `save_inference_model` writes it."""
    folder.mkdir(parents=True)
    w = weights(arch) if w is None else w
    save_file(w, folder / "sae_weights.safetensors")
    cfg = {
        "architecture": arch,
        "d_in": D,
        "d_sae": F,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": "transcoder" not in arch,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "model_name": "gpt2",
            "hook_name": "blocks.5.hook_resid_post",
            "sae_lens_version": "6.54.12",
            **(metadata or {}),
        },
        **cfg_fields,
    }
    if "transcoder" in arch:
        cfg.setdefault("d_out", D)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return cfg, w


def reference(cfg, w, x):
    """SAELens' (feature activations, output) for raw x, from its definitions."""
    w = {k: v.to(getattr(torch, cfg["dtype"])).float() for k, v in w.items()}
    arch, norm = cfg["architecture"], cfg["normalize_activations"]
    sae_in = x
    if norm == "constant_norm_rescale":
        coeff = math.sqrt(D) / x.norm(dim=-1, keepdim=True)
        sae_in = x * coeff
    elif norm == "layer_norm":
        mu = x.mean(-1, keepdim=True)
        std = (x - mu).std(-1, keepdim=True)
        sae_in = (x - mu) / (std + 1e-5)
    elif norm == "expected_average_only_in":  # scaled by SAELens' activation scaler
        sae_in = x * cfg["_factor"]
    sae_in = sae_in - w["b_dec"] * cfg["apply_b_dec_to_input"]
    rescale = cfg.get("rescale_acts_by_decoder_norm", False) and "topk" in arch
    norms = w["W_dec"].norm(dim=-1)
    if arch == "gated":
        gate = (sae_in @ w["W_enc"] + w["b_gate"] > 0).float()
        f = gate * torch.relu(sae_in @ (w["W_enc"] * w["r_mag"].exp()) + w["b_mag"])
    else:
        pre = sae_in @ w["W_enc"] + w["b_enc"]
        pre = pre * norms if rescale else pre
        if arch == "topk":
            top = pre.topk(cfg["k"], dim=-1)
            f = torch.zeros_like(pre).scatter_(-1, top.indices, torch.relu(top.values))
        elif "batchtopk" in arch:  # inference: the saved threshold (as its jumprelu save)
            f = torch.relu(pre) * (pre > w["topk_threshold"].float())
        elif "jumprelu" in arch:
            f = torch.relu(pre) * (pre > w["threshold"])
        else:
            f = torch.relu(pre)
    out = (f / norms if rescale else f) @ w["W_dec"] + w["b_dec"]
    if norm == "constant_norm_rescale":
        out = out / coeff
    elif norm == "layer_norm":
        out = out * std + mu
    elif norm == "expected_average_only_in":
        out = out / cfg["_factor"]
    if "skip" in arch:
        out = out + x @ w["W_skip"].T
    return f, out


def check(folder, cfg, w, *, standard_norms=False, atol=1e-5):
    sae = load_sae(folder)
    x = rows()
    f_ref, out_ref = reference(cfg, w, x)
    if standard_norms:  # a relu SAE reports f_i ||W_dec_i|| (Scaling Monosemanticity)
        f_ref = f_ref * w["W_dec"].to(getattr(torch, cfg["dtype"])).float().norm(dim=-1)
    torch.testing.assert_close(sae.encode(x), f_ref, rtol=1e-5, atol=atol)
    torch.testing.assert_close(sae(x), out_ref, rtol=1e-5, atol=atol)
    return sae


# -- architectures and rescale_acts_by_decoder_norm ----------------------------------------------
@pytest.mark.parametrize("rescale", [True, False])
@pytest.mark.parametrize("apply_b_dec", [True, False])
def test_topk_with_and_without_decoder_norm_rescaling(rescale, apply_b_dec, tmp_path):
    cfg, w = write(
        tmp_path / "sl",
        "topk",
        k=K,
        rescale_acts_by_decoder_norm=rescale,
        apply_b_dec_to_input=apply_b_dec,
    )
    sae = check(tmp_path / "sl", cfg, w)
    assert isinstance(sae, TopKSAE) and sae.cfg.k == K
    assert sae.cfg.subtract_b_dec_in_encoder is apply_b_dec


def test_rescaled_topk_differs_from_its_unrescaled_reading(tmp_path):
    # The fold matters: read without it, the same weights choose other latents.
    cfg, w = write(tmp_path / "sl", "topk", k=K, rescale_acts_by_decoder_norm=True)
    f_plain, _ = reference({**cfg, "rescale_acts_by_decoder_norm": False}, w, rows())
    assert not torch.allclose(load_sae(tmp_path / "sl").encode(rows()), f_plain, atol=1e-3)


@pytest.mark.parametrize("arch", ["jumprelu", "standard"])
def test_jumprelu_thresholds_at_or_below_zero_and_standard(arch, tmp_path):
    cfg, w = write(tmp_path / "sl", arch)
    sae = check(tmp_path / "sl", cfg, w, standard_norms=arch == "standard")
    if arch == "jumprelu":
        assert isinstance(sae, JumpReLUSAE) and bool((w["threshold"] <= 0).any())


@pytest.mark.parametrize("apply_b_dec", [True, False])
def test_gated(apply_b_dec, tmp_path):
    cfg, w = write(tmp_path / "sl", "gated", apply_b_dec_to_input=apply_b_dec)
    sae = check(tmp_path / "sl", cfg, w)
    assert isinstance(sae, GatedSAE) and sae.cfg.arch == "gated"


@pytest.mark.parametrize("arch", ["batchtopk", "matryoshka_batchtopk"])
@pytest.mark.parametrize("rescale", [True, False])
def test_batchtopk_training_checkpoints(arch, rescale, tmp_path):
    extra = {"matryoshka_widths": [10, F]} if arch.startswith("matryoshka") else {}
    cfg, w = write(tmp_path / "sl", arch, k=float(K), rescale_acts_by_decoder_norm=rescale, **extra)
    sae = check(tmp_path / "sl", cfg, w)
    assert isinstance(sae, BatchTopKSAE) and sae.cfg.k == K
    assert sae.cfg.batchtopk_threshold == pytest.approx(0.35)


# -- normalize_activations -----------------------------------------------------------------------
@pytest.mark.parametrize("norm", ["constant_norm_rescale", "layer_norm"])
@pytest.mark.parametrize("arch", ["topk", "jumprelu", "standard", "gated"])
def test_per_token_input_normalisations(norm, arch, tmp_path):
    extra = {"k": K, "rescale_acts_by_decoder_norm": True} if arch == "topk" else {}
    cfg, w = write(tmp_path / "sl", arch, normalize_activations=norm, **extra)
    sae = check(tmp_path / "sl", cfg, w, standard_norms=arch == "standard")
    assert sae.cfg.input_norm == norm
    # It is recorded in monoscope's own format, and a relu's sparse codes use it too.
    sae.save(tmp_path / "ours")
    again = load_sae(tmp_path / "ours")
    assert again.cfg.input_norm == norm and torch.equal(again(rows()), sae(rows()))


def test_per_token_normalisation_changes_the_reconstruction(tmp_path):
    cfg, w = write(tmp_path / "sl", "jumprelu", normalize_activations="layer_norm")
    _, without = reference({**cfg, "normalize_activations": "none"}, w, rows())
    assert not torch.allclose(load_sae(tmp_path / "sl")(rows()), without, atol=1e-2)


def test_constant_norm_rescale_keeps_an_all_zero_row_at_zero_input(tmp_path):
    write(tmp_path / "sl", "standard", normalize_activations="constant_norm_rescale")
    sae = load_sae(tmp_path / "sl")
    x = torch.cat([rows(3), torch.zeros(1, D)])
    assert torch.isfinite(sae(x)).all() and torch.isfinite(sae.encode(x)).all()


@pytest.mark.parametrize("where", ["activation_scaler.json", "cfg.json"])
def test_expected_average_only_in_with_its_factor(where, tmp_path):
    factor = 0.37
    extra = {"norm_scaling_factor": factor} if where == "cfg.json" else {}
    cfg, w = write(
        tmp_path / "sl",
        "topk",
        k=K,
        normalize_activations="expected_average_only_in",
        rescale_acts_by_decoder_norm=True,
        **extra,
    )
    if where == "activation_scaler.json":
        scaler = {"scaling_factor": factor, "has_whitening": False}
        (tmp_path / "sl" / "activation_scaler.json").write_text(json.dumps(scaler))
    sae = check(tmp_path / "sl", {**cfg, "_factor": factor}, w)
    assert sae.cfg.input_scale == pytest.approx(factor)


def test_expected_average_only_in_without_its_factor_is_refused(tmp_path):
    write(tmp_path / "sl", "standard", normalize_activations="expected_average_only_in")
    with pytest.raises(SAEFormatError, match=r"needs its scaling factor.*norm_scaling_factor"):
        load_sae(tmp_path / "sl")


@pytest.mark.parametrize("apply_b_dec", [True, False])
@pytest.mark.parametrize("arch", ["topk", "gated", "jumprelu", "standard"])
def test_covariance_whitening_checkpoints_fold_exactly(arch, apply_b_dec, tmp_path):
    extra = {"k": K, "rescale_acts_by_decoder_norm": True} if arch == "topk" else {}
    cfg, w = write(
        tmp_path / "sl",
        arch,
        normalize_activations="covariance_whitening",
        apply_b_dec_to_input=apply_b_dec,
        **extra,
    )
    g = torch.Generator().manual_seed(11)
    mean = torch.randn(D, generator=g, dtype=torch.float64)
    matrix = torch.randn(D, D, generator=g, dtype=torch.float64) / math.sqrt(D) + torch.eye(D)
    stats = {
        "mean": mean,
        "matrix": matrix,
        "inverse_matrix": torch.linalg.inv(matrix).contiguous(),
    }
    save_file(stats, tmp_path / "sl" / "activation_whitening.safetensors")
    x = rows()
    z = ((x.double() - mean) @ matrix).float()  # what SAELens' trainer feeds the SAE
    f_ref, out_ref = reference({**cfg, "normalize_activations": "none"}, w, z)
    out_ref = (out_ref.double() @ stats["inverse_matrix"] + mean).float()
    sae = load_sae(tmp_path / "sl")
    if arch == "standard":
        f_ref = f_ref * sae.W_dec.norm(dim=-1)  # the folded decoder's norms
    torch.testing.assert_close(sae.encode(x), f_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(sae(x), out_ref, rtol=1e-4, atol=1e-4)


# -- dtype, hooks ----------------------------------------------------------------------------
def test_dtype_rounds_the_weights_as_saelens_does(tmp_path):
    cfg, w = write(tmp_path / "sl", "topk", k=K, dtype="bfloat16")
    sae = check(tmp_path / "sl", cfg, w, atol=1e-4)
    assert sae.W_enc.dtype == torch.float32
    assert torch.equal(sae.W_enc, w["W_enc"].bfloat16().float())


def test_float64_stays_float64(tmp_path):
    w = {k: v.double() for k, v in weights("jumprelu").items()}
    write(tmp_path / "sl", "jumprelu", w=w, dtype="float64")
    sae = load_sae(tmp_path / "sl")
    assert sae.W_enc.dtype == torch.float64 and torch.equal(sae.W_dec, w["W_dec"])


def test_hook_and_model_names(tmp_path):
    write(tmp_path / "v6", "standard")
    assert load_sae(tmp_path / "v6").cfg.site == "blocks.5.hook_resid_post"
    write(
        tmp_path / "old",
        "standard",
        metadata={"hook_name": None},
        hook_point="blocks.2.hook_mlp_out",
    )
    sae = load_sae(tmp_path / "old")
    assert (sae.cfg.site, sae.cfg.model) == ("blocks.2.hook_mlp_out", "gpt2")


# -- transcoders ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "arch", ["transcoder", "skip_transcoder", "jumprelu_transcoder", "jumprelu_skip_transcoder"]
)
def test_transcoders_whose_output_is_as_wide_as_their_input(arch, tmp_path):
    meta = {"hook_name": "blocks.5.ln2.hook_normalized", "hook_name_out": "blocks.5.hook_mlp_out"}
    cfg, w = write(tmp_path / "sl", arch, metadata=meta)
    sae = check(tmp_path / "sl", cfg, w, standard_norms="jumprelu" not in arch)
    assert sae.cfg.transcoder and sae.cfg.output_site == "blocks.5.hook_mlp_out"
    assert sae.cfg.skip_connection == ("skip" in arch)
    export_saelens(sae, tmp_path / "back")
    doc = json.loads((tmp_path / "back" / "cfg.json").read_text())
    assert doc["architecture"] == arch and doc["hook_name_out"] == "blocks.5.hook_mlp_out"
    torch.testing.assert_close(load_sae(tmp_path / "back")(rows()), sae(rows()))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"d_out": D + 1}, r"d_out=13 != d_in=12"),
        ({"normalize_activations": "layer_norm"}, "a transcoder with normalize_activations"),
    ],
)
def test_transcoders_that_do_not_fit_are_refused(fields, message, tmp_path):
    w = weights("transcoder")
    if "d_out" in fields:
        w["W_dec"], w["b_dec"] = torch.zeros(F, D + 1), torch.zeros(D + 1)
    write(tmp_path / "sl", "transcoder", w=w, **fields)
    with pytest.raises(SAEFormatError, match=message):
        load_sae(tmp_path / "sl")


# -- refusals -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("arch", "fields", "message"),
    [
        ("topk", {"k": 2.5}, r"k=2.5 is not a whole number"),
        (
            "standard",
            {"normalize_activations": "covariance_whitening"},
            "'covariance_whitening' needs its statistics",
        ),
        ("standard", {"normalize_activations": "sphere"}, "normalize_activations='sphere'"),
        ("matching_pursuit", {}, "architecture 'matching_pursuit' is not supported"),
        ("standard", {"dtype": "int8"}, "dtype 'int8' is not supported"),
    ],
)
def test_options_without_an_exact_meaning_are_refused_by_name(arch, fields, message, tmp_path):
    write(tmp_path / "sl", arch, w=weights("standard"), **fields)
    with pytest.raises(SAEFormatError, match=message):
        load_sae(tmp_path / "sl")


def test_unexpected_tensors_are_named(tmp_path):
    write(tmp_path / "sl", "standard", w={**weights("standard"), "mystery": torch.zeros(3)})
    with pytest.raises(SAEFormatError, match=r"unexpected tensors \['mystery'\]"):
        load_sae(tmp_path / "sl")


# -- exports keep the options ---------------------------------------------------------------
@pytest.mark.parametrize("arch", ["gated", "topk"])
def test_export_round_trip_keeps_gates_and_input_norms(arch, tmp_path):
    extra = {"k": K, "rescale_acts_by_decoder_norm": True} if arch == "topk" else {}
    write(tmp_path / "sl", arch, normalize_activations="layer_norm", **extra)
    sae = load_sae(tmp_path / "sl")
    sae.cfg.input_scale = 1.7  # folded into the export's weights
    with torch.no_grad():
        sae.W_enc.div_(1.7), sae.W_dec.mul_(1.7), sae.b_dec.mul_(1.7)
    export_saelens(sae, tmp_path / "out")
    doc = json.loads((tmp_path / "out" / "cfg.json").read_text())
    assert doc["normalize_activations"] == "layer_norm"
    assert ("b_gate" in load_file(tmp_path / "out" / "sae_weights.safetensors")) == (
        arch == "gated"
    )
    back = load_sae(tmp_path / "out")
    assert type(back) is type(sae) and back.cfg.input_scale == pytest.approx(1.7)
    torch.testing.assert_close(back(rows()), sae(rows()))
    f_ref, out_ref = reference(
        {**doc, "k": K}, load_file(tmp_path / "out" / "sae_weights.safetensors"), rows()
    )
    torch.testing.assert_close(sae(rows()), out_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae.encode(rows()), f_ref, rtol=1e-5, atol=1e-5)


def test_old_monoscope_configs_load_without_the_new_fields(tmp_path):
    write(tmp_path / "sl", "jumprelu")
    load_sae(tmp_path / "sl").save(tmp_path / "ours")
    doc = json.loads((tmp_path / "ours" / "config.json").read_text())
    for key in ("input_norm", "skip_connection", "transcoder", "output_site"):
        del doc[key]
    (tmp_path / "ours" / "config.json").write_text(json.dumps(doc))
    sae = load_sae(tmp_path / "ours", verify=False)
    assert sae.cfg.input_norm == "none" and not sae.cfg.skip_connection


# -- release folders ----------------------------------------------------------------------------
def test_a_release_folder_lists_its_sae_ids_and_each_id_loads(tmp_path):
    release = tmp_path / "gemma-scope-like"
    for layer in (3, 12):
        meta = {"hook_name": f"blocks.{layer}.hook_resid_post"}
        write(release / f"layer_{layer}" / "width_16k" / "average_l0_82", "jumprelu", metadata=meta)
    (release / "README.md").write_text("a release")
    with pytest.raises(SAEFormatError) as caught:
        load_sae(release)
    message = str(caught.value)
    assert message == (
        f"{release} is a release folder: it holds 2 SAELens SAEs in subfolders: "
        "layer_3/width_16k/average_l0_82 (blocks.3.hook_resid_post), "
        "layer_12/width_16k/average_l0_82 (blocks.12.hook_resid_post): pass one of them"
    )
    sae = load_sae(release / "layer_3" / "width_16k" / "average_l0_82")
    assert sae.cfg.site == "blocks.3.hook_resid_post"


# -- the runtime normalisation in the SAE base ----------------------------------------------
@pytest.mark.parametrize("arch", ["relu", "topk", "batchtopk", "jumprelu", "gated"])
def test_sparse_codes_read_the_per_token_normalised_rows(arch, tmp_path):
    # analyze reads codes through sparse_codes: they must be encode's on normalised rows.
    k = K if arch in ("topk", "batchtopk") else None
    threshold = 0.01 if arch == "batchtopk" else None
    cfg = SAEConfig(
        arch=arch, d_in=D, n_features=F, k=k, input_norm="layer_norm", batchtopk_threshold=threshold
    )
    sae = build_sae(cfg, seed=1).eval()
    x = rows()
    pattern, values = sae.sparse_codes(x)
    dense = torch.zeros(x.shape[0], F)
    counts = pattern.crow[1:] - pattern.crow[:-1]
    dense[torch.repeat_interleave(torch.arange(x.shape[0]), counts), pattern.col] = values
    torch.testing.assert_close(dense, sae.decoder_codes(x))
    doc = {**cfg.to_json(), "input_norm": "none"}
    plain = build_sae(SAEConfig.from_json(doc), seed=1).eval()
    assert not torch.allclose(plain.decoder_codes(x), dense)


def test_config_refuses_an_unknown_input_norm():
    with pytest.raises(ValueError, match="input_norm must be one of none, constant_norm_rescale"):
        SAEConfig(arch="relu", d_in=D, n_features=F, input_norm="rms")


def test_gated_is_read_not_trained(tmp_path):
    write(tmp_path / "sl", "gated")
    with pytest.raises(ValueError, match="not trained by monoscope"):
        load_sae(tmp_path / "sl").training_step(rows(), 0.0)
