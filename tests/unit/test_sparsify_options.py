"""sparsify SAEs with every SparseCoderConfig option, in the files sparsify writes, against
sparsify's computation written out here from its definition; checkpoint folders; exports."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from monoscope.evaluate import evaluate
from monoscope.evaluate.splice import run_sae
from monoscope.sae import SAEConfig, SAEFormatError, build_sae, convert, load_sae
from monoscope.sae.sparsify import export_sparsify, hookpoint_sites
from monoscope.steer.intervention import check_sae
from monoscope.steer.spec import SteeringError
from monoscope.testing import SPARSIFY_OPTION_CASES as OPTION_CASES

D, N, K = 12, 48, 4


def write_coder(folder, d=D, n=N, k=K, tensors=None, **options):
    """A sparsify SAE folder (cfg.json + sae.safetensors) with random weights; its tensors."""
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(len(str(folder)))
    w = {
        "encoder.weight": torch.randn(n, d, generator=g) * 0.4,
        "encoder.bias": torch.randn(n, generator=g) * 0.1,
        "W_dec": torch.randn(n, d, generator=g) * 0.3,
        "b_dec": torch.randn(d, generator=g),
    }
    if options.get("skip_connection"):
        w["W_skip"] = torch.randn(d, d, generator=g) * 0.2
    w = tensors if tensors is not None else w
    save_file(w, folder / "sae.safetensors")
    cfg = {
        "activation": "topk",
        "expansion_factor": 32,
        "normalize_decoder": True,
        "num_latents": n,
        "k": k,
        "multi_topk": False,
        "skip_connection": False,
        "transcode": False,
        "d_in": d,
        **options,
    }
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return w


def sparsify_forward(w, x, k=K, activation="topk", transcode=False):
    """sparsify's encode and decode, from its definition: (dense codes, reconstruction)."""
    source = x if transcode else x - w["b_dec"]
    pre = torch.relu(source @ w["encoder.weight"].T + w["encoder.bias"])
    if activation == "topk":
        acts, idx = pre.topk(k, dim=-1)
    else:  # groupmax: the largest of each of k contiguous groups
        acts, within = pre.view(x.shape[0], k, -1).max(dim=-1)
        idx = within + torch.arange(k) * (pre.shape[-1] // k)
    codes = torch.zeros_like(pre).scatter_(-1, idx, acts)
    y = (acts[..., None] * w["W_dec"][idx]).sum(-2) + w["b_dec"]
    if "W_skip" in w:
        y = y + x @ w["W_skip"].T
    return codes, y


def rows(n=64, d=D, seed=3):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed)) * 2 + 0.5


@pytest.mark.parametrize("options", OPTION_CASES.values(), ids=OPTION_CASES.keys())
def test_every_option_loads_exactly(options, tmp_path):
    w = write_coder(tmp_path / "layers.5", **options)
    sae = load_sae(tmp_path / "layers.5")
    x = rows()
    codes, y = sparsify_forward(
        w, x, activation=options.get("activation", "topk"), transcode=options.get("transcode")
    )
    assert torch.allclose(sae.encode(x), codes, atol=1e-6)
    assert torch.allclose(sae(x), y, atol=1e-5)
    assert sae.cfg.arch == options.get("activation", "topk") and sae.cfg.k == K
    assert sae.cfg.skip_connection == bool(options.get("skip_connection"))
    if options.get("transcode"):  # layers.5's input and output: the residual before and after
        assert sae.cfg.transcoder and not sae.cfg.subtract_b_dec_in_encoder
        assert (sae.cfg.site, sae.cfg.output_site) == (
            "blocks.5.hook_resid_pre",
            "blocks.5.hook_resid_post",
        )
    else:
        assert sae.cfg.site == "blocks.5.hook_resid_post" and sae.cfg.output_site is None


def test_groupmax_keeps_one_latent_per_group(tmp_path):
    write_coder(tmp_path / "gm", activation="groupmax")
    codes = load_sae(tmp_path / "gm").encode(rows())
    assert ((codes.view(-1, K, N // K) > 0).sum(-1) <= 1).all()
    assert ((codes > 0).sum(-1) == K).float().mean() > 0.5  # most groups have a positive max


@pytest.mark.parametrize("options", OPTION_CASES.values(), ids=OPTION_CASES.keys())
def test_options_survive_monoscope_format_and_sparsify_export(options, tmp_path):
    write_coder(tmp_path / "src", **options)
    sae, x = load_sae(tmp_path / "src"), rows()
    sae.save(tmp_path / "ours")
    again = load_sae(tmp_path / "ours")
    assert again.cfg == sae.cfg and torch.equal(again(x), sae(x))
    # The export is sparsify's definition applied to the written tensors, not only our reader.
    export_sparsify(again, tmp_path / "out")
    doc = json.loads((tmp_path / "out" / "cfg.json").read_text())
    w = load_file(tmp_path / "out" / "sae.safetensors")
    codes, y = sparsify_forward(w, x, activation=doc["activation"], transcode=doc["transcode"])
    assert torch.allclose(codes, sae.encode(x), atol=1e-5)
    assert torch.allclose(y, sae(x), atol=1e-5)
    assert {key: doc[key] for key in ("skip_connection", "transcode", "multi_topk")} == {
        "skip_connection": bool(options.get("skip_connection")),
        "transcode": bool(options.get("transcode")),
        "multi_topk": bool(options.get("multi_topk")),
    }


@pytest.mark.parametrize("subtract", [True, False])
def test_export_folds_input_scale_and_b_dec(subtract, tmp_path):
    cfg = SAEConfig("topk", D, N, k=K, input_scale=0.37, subtract_b_dec_in_encoder=subtract)
    sae = build_sae(cfg, seed=1)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 1.0)
    export_sparsify(sae, tmp_path / "sp")
    w = load_file(tmp_path / "sp" / "sae.safetensors")
    x = rows()
    codes, y = sparsify_forward(w, x)
    assert torch.allclose(codes, sae.encode(x), atol=1e-5)
    assert torch.allclose(y, sae(x), atol=1e-5)


@pytest.mark.parametrize("arch", ["relu", "jumprelu", "batchtopk"])
def test_export_refuses_what_sparsify_cannot_compute(arch, tmp_path):
    sae = build_sae(SAEConfig(arch, D, N, k=K if arch == "batchtopk" else None), seed=0)
    with pytest.raises(ValueError, match=f"a '{arch}' SAE has no sparsify equivalent"):
        export_sparsify(sae, tmp_path / "sp")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"activation": "jumprelu"}, "activation 'jumprelu' is not supported"),
        ({"signed": True}, r"sparsify option\(s\) signed=True unknown to monoscope"),
        ({"multi_topk": "yes"}, "multi_topk must be true or false"),
        ({"activation": "groupmax", "k": 5}, "n_features must be a multiple of k"),
        ({"num_latents": 40}, r"encoder.weight has shape \[48, 12\], expected \[40, 12\]"),
    ],
)
def test_options_without_an_exact_meaning_are_refused_by_name(options, message, tmp_path):
    write_coder(tmp_path / "sp", **options)
    with pytest.raises(SAEFormatError, match=message):
        load_sae(tmp_path / "sp")


def test_unset_unknown_options_and_missing_d_in_are_read(tmp_path):
    w = write_coder(tmp_path / "sp", signed=False, d_in=None, num_latents=0, expansion_factor=4)
    x = rows()
    assert torch.allclose(load_sae(tmp_path / "sp")(x), sparsify_forward(w, x)[1], atol=1e-5)


def test_tensors_must_match_the_options(tmp_path):
    w = write_coder(tmp_path / "a", skip_connection=True)
    del w["W_skip"]
    save_file(w, tmp_path / "a" / "sae.safetensors")
    with pytest.raises(SAEFormatError, match=r"\(topk, skip_connection\).*missing \['W_skip'\]"):
        load_sae(tmp_path / "a")
    write_coder(tmp_path / "b", tensors={**w, "W_skip": torch.zeros(D, D)})
    with pytest.raises(SAEFormatError, match=r"unexpected \['W_skip'\]"):
        load_sae(tmp_path / "b")


def test_hookpoints_map_to_sites_only_where_exact():
    assert hookpoint_sites("layers.15") == ("blocks.15.hook_resid_pre", "blocks.15.hook_resid_post")
    assert hookpoint_sites("h.2") == ("blocks.2.hook_resid_pre", "blocks.2.hook_resid_post")
    assert hookpoint_sites("layers.3.mlp") == (None, "blocks.3.hook_mlp_out")  # input: ln2's
    assert hookpoint_sites("layers.3.self_attn") == (None, "blocks.3.hook_attn_out")
    assert hookpoint_sites("layers.3.mlp.down_proj") == ("blocks.3.mlp.hook_post", None)
    assert hookpoint_sites("embed_tokens") == (None, None)


def test_checkpoint_folder_lists_its_saes_and_each_loads(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    model = "HuggingFaceTB/SmolLM2-135M"
    (run / "config.json").write_text(json.dumps({"model": model, "hookpoints": [], "sae": {}}))
    for name in ("layers.10", "layers.2", "layers.4/seed0", "layers.4/seed1"):
        write_coder(run / name)
    write_coder(run / "layers.3.mlp", transcode=True)
    (run / "state.pt").write_bytes(b"")  # sparsify's training state, beside the SAEs
    with pytest.raises(SAEFormatError) as caught:
        load_sae(run)
    message = str(caught.value)
    assert f"{run} is a checkpoint folder: it holds 5 sparsify SAEs: " in message
    assert message.index("layers.2 (blocks.2.hook_resid_post)") < message.index("layers.10 ")
    assert "layers.3.mlp (transcoder ? -> blocks.3.hook_mlp_out)" in message
    assert "layers.4/seed1 (blocks.4.hook_resid_post)" in message
    assert message.endswith("pass one of them")
    with pytest.raises(SAEFormatError, match="checkpoint folder"):
        convert(run, "monoscope", tmp_path / "out")
    seeded = load_sae(run / "layers.4" / "seed1")
    assert (seeded.cfg.site, seeded.cfg.model) == ("blocks.4.hook_resid_post", model)
    transcoder = load_sae(run / "layers.3.mlp")
    assert transcoder.cfg.transcoder and transcoder.cfg.site is None
    assert transcoder.cfg.output_site == "blocks.3.hook_mlp_out"
    assert transcoder.cfg.training["hookpoint"] == "layers.3.mlp"


def test_groupmax_is_not_trained(tmp_path):
    write_coder(tmp_path / "gm", activation="groupmax")
    with pytest.raises(ValueError, match="not trained by monoscope"):
        load_sae(tmp_path / "gm").training_step(rows(), 0.0)


def test_evaluate_adds_the_skip_term_and_refuses_transcoders(tmp_path):
    w = write_coder(tmp_path / "skip", skip_connection=True)
    x = rows()
    x_hat = run_sae(load_sae(tmp_path / "skip"), x)[1]  # eval's and the splice's reconstruction
    assert torch.allclose(x_hat, sparsify_forward(w, x)[1], atol=1e-5)
    write_coder(tmp_path / "layers.1", transcode=True)
    np.save(tmp_path / "rows.npy", x.numpy())
    with pytest.raises(ValueError, match=r"is a transcoder \(blocks.1.hook_resid_pre -> "):
        evaluate(load_sae(tmp_path / "layers.1"), tmp_path / "rows.npy")


def test_steering_refuses_transcoders(tmp_path):
    # Steering writes a reconstruction back where the SAE reads: a transcoder's output belongs
    # at another site (here the residual after layer 1, read before it).
    write_coder(tmp_path / "layers.1", transcode=True)
    with pytest.raises(SteeringError, match="'sae' is a transcoder"):
        check_sae(None, load_sae(tmp_path / "layers.1"))  # refused before the model is read


def test_convert_writes_sparsify(tmp_path):
    w = write_coder(tmp_path / "src", activation="groupmax", skip_connection=True)
    convert(tmp_path / "src", "monoscope", tmp_path / "ours")
    convert(tmp_path / "ours", "sparsify", tmp_path / "back")
    back, x = load_file(tmp_path / "back" / "sae.safetensors"), rows()
    got = sparsify_forward(back, x, activation="groupmax")
    for a, b in zip(got, sparsify_forward(w, x, activation="groupmax"), strict=True):
        assert torch.allclose(a, b, atol=1e-5)
