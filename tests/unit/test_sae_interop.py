"""monoscope.sae files: our format, SAELens export/import, sparsify import, convert, bad inputs."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from monoscope.sae import (
    ARCHITECTURES,
    JumpReLUSAE,
    SAEConfig,
    SAEFormatError,
    TopKSAE,
    build_sae,
    convert,
    detect_format,
    export_saelens,
    load_sae,
)

D, F, K = 16, 48, 5


def trained_like(arch: str, seed: int = 0) -> torch.nn.Module:
    """A perturbed SAE (nonzero biases, uneven decoder norms, thresholds) with a site."""
    k = K if arch in ("topk", "batchtopk") else None
    cfg = SAEConfig(
        arch, D, F, k=k, input_scale=0.37, site="blocks.15.hook_resid_post", model="tiny"
    )
    sae = build_sae(cfg, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    if arch == "batchtopk":
        sae.cfg.batchtopk_threshold = 0.4
    return sae.eval()


def data(n: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 3.0 * torch.randn(n, D, generator=g) + 1.0


def saelens_reference(folder, x):
    """SAELens' inference, written from its definitions: (encode, reconstruction)."""
    cfg = json.loads((folder / "cfg.json").read_text())
    w = load_file(folder / "sae_weights.safetensors")
    pre = (x - w["b_dec"] * cfg["apply_b_dec_to_input"]) @ w["W_enc"] + w["b_enc"]
    if cfg["architecture"] == "standard":
        f = torch.relu(pre)
    elif cfg["architecture"] == "topk":
        top = pre.topk(cfg["k"], dim=-1)
        f = torch.zeros_like(pre).scatter_(-1, top.indices, torch.relu(top.values))
    else:
        f = torch.relu(pre) * (pre > w["threshold"])
    return f, f @ w["W_dec"] + w["b_dec"]


# -- our format --------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_save_and_load_round_trip_bit_identical(arch, tmp_path):
    sae = trained_like(arch)
    sae.save(tmp_path / "sae")
    assert sorted(p.name for p in (tmp_path / "sae").iterdir()) == [
        "checksums.json",
        "config.json",
        "weights.safetensors",
    ]
    loaded = load_sae(tmp_path / "sae")
    assert type(loaded) is type(sae) and not loaded.training
    assert loaded.cfg == sae.cfg
    x = data()
    assert torch.equal(loaded(x), sae(x))
    assert torch.equal(loaded.encode(x), sae.encode(x))
    doc = json.loads((tmp_path / "sae" / "config.json").read_text())
    assert doc["format"] == "monoscope.sae" and doc["arch"] == arch
    if arch == "batchtopk":
        assert doc["batchtopk_threshold"] == pytest.approx(0.4)
    if arch == "jumprelu":
        assert "log_threshold" in load_file(tmp_path / "sae" / "weights.safetensors")


# -- SAELens -------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_saelens_export_matches_saelens_semantics_and_loads_back(arch, tmp_path):
    sae = trained_like(arch)
    export_saelens(sae, tmp_path / "sl")
    x = data()
    f_ref, x_hat_ref = saelens_reference(tmp_path / "sl", x)
    assert torch.allclose(x_hat_ref, sae(x), rtol=1e-5, atol=1e-4)
    assert torch.allclose(f_ref, sae.encode(x), rtol=1e-5, atol=1e-5)
    loaded = load_sae(tmp_path / "sl")
    assert loaded.cfg.arch == arch and loaded.cfg.k == sae.cfg.k
    assert loaded.cfg.batchtopk_threshold == sae.cfg.batchtopk_threshold
    assert loaded.cfg.training == {**sae.cfg.training, "imported_from": "saelens"}
    assert loaded.cfg.input_scale == sae.cfg.input_scale
    assert loaded.cfg.site == sae.cfg.site and loaded.cfg.model == "tiny"
    assert torch.allclose(loaded(x), sae(x), rtol=1e-5, atol=1e-4)
    assert torch.allclose(loaded.encode(x), sae.encode(x), rtol=1e-5, atol=1e-5)


def test_an_edited_saelens_export_loads_as_what_its_weights_say(tmp_path):
    from safetensors.torch import save_file

    export_saelens(trained_like("batchtopk"), tmp_path / "sl")
    weights = load_file(tmp_path / "sl" / "sae_weights.safetensors")
    weights["threshold"][0] = 0.9  # no longer one threshold for all: a jumprelu now
    save_file(weights, tmp_path / "sl" / "sae_weights.safetensors")
    loaded = load_sae(tmp_path / "sl")
    assert loaded.cfg.arch == "jumprelu" and loaded.cfg.training["imported_from"] == "saelens"


def test_saelens_config_fields(tmp_path):
    export_saelens(trained_like("topk"), tmp_path / "topk")
    cfg = json.loads((tmp_path / "topk" / "cfg.json").read_text())
    assert cfg["architecture"] == "topk" and cfg["k"] == K
    assert cfg["activation_fn_kwargs"] == {"k": K}
    assert cfg["d_in"] == D and cfg["d_sae"] == F and cfg["dtype"] == "float32"
    assert cfg["hook_name"] == "blocks.15.hook_resid_post" and cfg["hook_layer"] == 15
    assert cfg["apply_b_dec_to_input"] is True and cfg["normalize_activations"] == "none"
    assert cfg["finetuning_scaling_factor"] is False and cfg["neuronpedia_id"] is None
    export_saelens(trained_like("relu"), tmp_path / "relu")
    cfg = json.loads((tmp_path / "relu" / "cfg.json").read_text())
    assert cfg["architecture"] == "standard" and cfg["apply_b_dec_to_input"] is False
    assert "k" not in cfg
    export_saelens(trained_like("batchtopk"), tmp_path / "btk")
    w = load_file(tmp_path / "btk" / "sae_weights.safetensors")
    assert torch.allclose(w["threshold"], torch.full((F,), 0.4))


def test_batchtopk_export_needs_a_threshold(tmp_path):
    sae = trained_like("batchtopk")
    sae.cfg.batchtopk_threshold = None
    with pytest.raises(ValueError, match="no inference threshold yet"):
        export_saelens(sae, tmp_path / "sl")


def write_saelens_v6(folder, arch="standard", apply_b_dec=True, **extra_cfg):
    """A folder as SAELens 6 `save_model` writes it (model and hook under "metadata")."""
    folder.mkdir()
    g = torch.Generator().manual_seed(5)
    w = {
        "W_enc": torch.randn(D, F, generator=g) * 0.3,
        "b_enc": torch.randn(F, generator=g) * 0.1,
        "W_dec": torch.randn(F, D, generator=g) * torch.rand(F, 1, generator=g),
        "b_dec": torch.randn(D, generator=g),
    }
    if arch == "jumprelu":
        w["threshold"] = torch.rand(F, generator=g)
    save_file(w, folder / "sae_weights.safetensors")
    cfg = {
        "architecture": arch,
        "d_in": D,
        "d_sae": F,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": apply_b_dec,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "model_name": "gpt2",
            "hook_name": "blocks.8.hook_resid_pre",
            "sae_lens_version": "6.5.0",
        },
        **extra_cfg,
    }
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return w


@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu"])
def test_saelens_v6_import(arch, tmp_path):
    extra = {"k": K} if arch == "topk" else {}
    w = write_saelens_v6(tmp_path / "sl", arch, **extra)
    sae = load_sae(tmp_path / "sl")
    assert sae.cfg.site == "blocks.8.hook_resid_pre" and sae.cfg.model == "gpt2"
    assert sae.cfg.subtract_b_dec_in_encoder and sae.cfg.input_scale == 1.0
    assert sae.cfg.training["imported_from"] == "saelens"
    x = data()
    f_ref, x_hat_ref = saelens_reference(tmp_path / "sl", x)
    assert torch.allclose(sae(x), x_hat_ref, rtol=1e-5, atol=1e-5)
    # "standard" features are reported in Scaling Monosemanticity's convention.
    norms = w["W_dec"].norm(dim=-1) if arch == "standard" else torch.ones(F)
    assert torch.allclose(sae.encode(x), f_ref * norms, rtol=1e-5, atol=1e-5)


def test_saelens_import_of_pre_6_topk_layout(tmp_path):
    write_saelens_v6(
        tmp_path / "sl", "standard", activation_fn_str="topk", activation_fn_kwargs={"k": 3}
    )
    sae = load_sae(tmp_path / "sl")
    assert isinstance(sae, TopKSAE) and sae.cfg.k == 3


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"architecture": "temporal"}, "architecture 'temporal' is not supported"),
        ({"normalize_activations": "expected_average_only_in"}, "normalize_activations"),
        ({"activation_fn_str": "tanh-relu"}, "activation function 'tanh-relu'"),
        ({"architecture": "topk"}, "a topk SAE without k"),
        ({"d_sae": 7}, "W_enc has shape [16, 48], expected [16, 7]"),
    ],
)
def test_saelens_import_rejects_what_it_cannot_represent(extra, message, tmp_path):
    write_saelens_v6(tmp_path / "sl", **extra)
    with pytest.raises(SAEFormatError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_sae(tmp_path / "sl")


# -- sparsify ----------------------------------------------------------------------------------
def write_sparsify(folder, with_d_in=True, **extra_cfg):
    """A folder in EleutherAI sparsify's layout (cfg.json + sae.safetensors)."""
    folder.mkdir()
    g = torch.Generator().manual_seed(7)
    W_dec = torch.randn(F, D, generator=g)
    w = {
        "encoder.weight": torch.randn(F, D, generator=g) * 0.3,
        "encoder.bias": torch.randn(F, generator=g) * 0.1,
        "W_dec": W_dec / W_dec.norm(dim=-1, keepdim=True),
        "b_dec": torch.randn(D, generator=g),
    }
    save_file(w, folder / "sae.safetensors")
    cfg = {
        "activation": "topk",
        "expansion_factor": 3,
        "normalize_decoder": True,
        "num_latents": 0,
        "k": K,
        "multi_topk": False,
        "skip_connection": False,
        "transcode": False,
        **extra_cfg,
    }
    if with_d_in:
        cfg["d_in"] = D
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return w


def sparsify_reference(w, x, k):
    """sparsify's encode (top-k of ReLU(encoder(x - b_dec))) and decode."""
    pre = torch.relu((x - w["b_dec"]) @ w["encoder.weight"].t() + w["encoder.bias"])
    top_acts, top_idx = pre.topk(k, dim=-1, sorted=False)
    x_hat = (top_acts[..., None] * w["W_dec"][top_idx]).sum(-2) + w["b_dec"]
    f = torch.zeros_like(pre).scatter_(-1, top_idx, top_acts)
    return f, x_hat


@pytest.mark.parametrize("with_d_in", [True, False])
def test_sparsify_import(with_d_in, tmp_path):
    w = write_sparsify(tmp_path / "sp", with_d_in=with_d_in)
    assert detect_format(tmp_path / "sp") == "sparsify"
    sae = load_sae(tmp_path / "sp")
    assert isinstance(sae, TopKSAE) and sae.cfg.k == K and sae.cfg.n_features == F
    x = data()
    f_ref, x_hat_ref = sparsify_reference(w, x, K)
    assert torch.allclose(sae.encode(x), f_ref, atol=1e-6)
    assert torch.allclose(sae(x), x_hat_ref, rtol=1e-5, atol=1e-5)


def test_sparsify_import_rejects_misshapen_tensors(tmp_path):
    # skip_connection, transcode and groupmax load (test_sparsify_options.py).
    write_sparsify(tmp_path / "sp", num_latents=40)
    with pytest.raises(SAEFormatError, match=r"encoder.weight has shape \[48, 16\], expected"):
        load_sae(tmp_path / "sp")


def test_sparsify_import_rejects_extra_tensors(tmp_path):
    w = write_sparsify(tmp_path / "sp")
    save_file({**w, "W_skip": torch.zeros(D, D)}, tmp_path / "sp" / "sae.safetensors")
    with pytest.raises(SAEFormatError, match=r"unexpected \['W_skip'\]"):
        load_sae(tmp_path / "sp")


# -- convert -----------------------------------------------------------------------------------
def test_convert_both_ways(tmp_path):
    sae = trained_like("jumprelu")
    sae.save(tmp_path / "ours")
    x = data()
    out = convert(tmp_path / "ours", "saelens", tmp_path / "sl")
    assert out == tmp_path / "sl" and detect_format(out) == "saelens"
    convert(tmp_path / "sl", "monoscope", tmp_path / "back")
    back = load_sae(tmp_path / "back")
    assert isinstance(back, JumpReLUSAE) and detect_format(tmp_path / "back") == "monoscope"
    assert torch.allclose(back(x), sae(x), rtol=1e-5, atol=1e-4)
    write_sparsify(tmp_path / "sp")
    convert(tmp_path / "sp", "saelens", tmp_path / "sp_sl")
    assert torch.allclose(load_sae(tmp_path / "sp_sl")(x), load_sae(tmp_path / "sp")(x))


def test_convert_refuses_to_write_over_files(tmp_path):
    trained_like("relu").save(tmp_path / "ours")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="already has files"):
        convert(tmp_path / "ours", "saelens", tmp_path / "busy")
    trained_like("topk").save(tmp_path / "busy")
    (tmp_path / "busy" / "train_log.jsonl").write_text("{}\n")  # the topk SAE's
    convert(tmp_path / "ours", "saelens", tmp_path / "busy", overwrite=True)
    # One SAE remains (the old monoscope files and their log are replaced), other files are
    # left alone.
    assert detect_format(tmp_path / "busy") == "saelens"
    assert not (tmp_path / "busy" / "train_log.jsonl").exists()
    assert (tmp_path / "busy" / "notes.txt").read_text() == "keep"
    (tmp_path / "afile").write_text("")
    with pytest.raises(FileExistsError, match="is a file"):
        convert(tmp_path / "ours", "saelens", tmp_path / "afile")
    with pytest.raises(ValueError, match="is the source folder"):
        convert(tmp_path / "ours", "monoscope", tmp_path / "ours", overwrite=True)
    with pytest.raises(ValueError, match="cannot convert to 'parquet'"):
        convert(tmp_path / "ours", "parquet", tmp_path / "new")


# -- bad inputs --------------------------------------------------------------------------------
def test_load_errors_name_what_was_expected(tmp_path):
    with pytest.raises(SAEFormatError, match="is not a folder"):
        load_sae(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SAEFormatError, match=r"holds no SAE: expected config.json \+ weights"):
        load_sae(tmp_path / "empty")
    trained_like("relu").save(tmp_path / "repo" / "layers.3")
    trained_like("topk").save(tmp_path / "repo" / "deeper" / "a" / "b")
    with pytest.raises(SAEFormatError, match=r"holds 2 SAEs in subfolders: deeper/a/b, layers.3"):
        load_sae(tmp_path / "repo")


def test_load_errors_for_bad_files(tmp_path):
    # Unverified: the checks behind the checksums (test_artifact_checks.py tests those).
    sae = trained_like("topk")
    sae.save(tmp_path / "a")
    weights = load_file(tmp_path / "a" / "weights.safetensors")
    save_file({**weights, "W_dec": torch.zeros(F, D + 1)}, tmp_path / "a" / "weights.safetensors")
    with pytest.raises(SAEFormatError, match=r"W_dec has shape \[48, 17\], expected \[48, 16\]"):
        load_sae(tmp_path / "a", verify=False)
    save_file({"W_dec": weights["W_dec"]}, tmp_path / "a" / "weights.safetensors")
    with pytest.raises(SAEFormatError, match=r"missing \['W_enc', 'b_dec', 'b_enc'\]"):
        load_sae(tmp_path / "a", verify=False)
    (tmp_path / "a" / "weights.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(SAEFormatError, match="cannot be read as safetensors"):
        load_sae(tmp_path / "a", verify=False)
    sae.save(tmp_path / "b")
    doc = json.loads((tmp_path / "b" / "config.json").read_text())
    (tmp_path / "b" / "config.json").write_text(json.dumps({**doc, "arch": "mystery"}))
    with pytest.raises(SAEFormatError, match="unknown SAE architecture 'mystery'"):
        load_sae(tmp_path / "b", verify=False)
    (tmp_path / "b" / "config.json").write_text(json.dumps({**doc, "k": 4000}))
    with pytest.raises(SAEFormatError, match="--k 4000 is larger than the number of features 48"):
        load_sae(tmp_path / "b", verify=False)
    (tmp_path / "b" / "config.json").write_text("{")
    with pytest.raises(SAEFormatError, match="is not valid JSON"):
        load_sae(tmp_path / "b", verify=False)
