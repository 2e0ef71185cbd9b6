"""The `monoscope` command: options come from the configs, errors are one clear line."""

from __future__ import annotations

import sys

import pytest

from monoscope.cli import build_parser, main
from monoscope.config_args import parse_count
from monoscope.harvest import ActivationStore


def test_sites_lists_every_site(tiny_model_dirs, capsys):
    assert main(["sites", str(tiny_model_dirs["gpt_neox"])]) == 0
    out = capsys.readouterr().out
    assert "GPTNeoXForCausalLM, 3 layers, d_model 32" in out
    assert "blocks.2.mlp.hook_post\t64" in out and out.count("blocks.") == 15


def test_harvest_command_writes_a_store(tiny_model_dirs, corpus_file, tmp_path):
    out = tmp_path / "acts"
    argv = [
        "harvest",
        "--model",
        str(tiny_model_dirs["qwen2"]),
        "--site",
        "blocks.0.hook_resid_pre",
        "--site",
        "blocks.2.hook_attn_out",
        "--corpus",
        str(corpus_file),
        "--tokens",
        "0.3k",
        "--out",
        str(out),
        "--dtype",
        "bf16",
        "--context",
        "32",
        "--no-progress",
    ]
    assert main(argv) == 0
    store = ActivationStore(out)
    assert store.n_tokens == 300 and store.sites == [
        "blocks.0.hook_resid_pre",
        "blocks.2.hook_attn_out",
    ]
    assert store.manifest["dtype"] == "bfloat16" and store.manifest["context"] == 32


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--tokens", "0", "tokens must be a positive"),
        ("--site", "blocks.3.hook_resid_post", "layer 3 out of range"),
        ("--corpus", "/no/such/corpus.txt", "corpus path does not exist"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    tiny_model_dirs, corpus_file, tmp_path, capsys, option, value, message
):
    options = {
        "--model": str(tiny_model_dirs["llama"]),
        "--corpus": str(corpus_file),
        "--site": "blocks.0.hook_resid_post",
        "--out": str(tmp_path / "acts"),
        option: value,
    }
    assert main(["harvest", "--no-progress", *(x for kv in options.items() for x in kv)]) == 2
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert last_line.startswith("monoscope harvest: error:") and message in last_line
    assert not (tmp_path / "acts").exists()


def test_every_command_has_help():
    """argparse %-formats help text: a docstring's "5%" once broke `demo --help`."""
    commands = build_parser()._subparsers._group_actions[0].choices
    for name, parser in commands.items():
        assert parser.format_help().startswith("usage: "), name
    assert "5% of" in " ".join(commands["demo"].format_help().split())


def test_help_comes_from_field_docstrings():
    harvest = build_parser()._subparsers._group_actions[0].choices["harvest"]
    help_text = " ".join(harvest.format_help().split())
    assert "Storage dtype of activations" in help_text and "(default: 128)" in help_text


@pytest.mark.parametrize(
    "text, value", [("1000", 1000), ("1e6", 10**6), ("250k", 250_000), ("2M", 2 * 10**6)]
)
def test_counts_accept_suffixes(text, value):
    assert parse_count(text) == value


def test_train_eval_and_convert_commands(tiny_model_dirs, corpus_file, tmp_path, capsys):
    model = str(tiny_model_dirs["llama"])
    acts, sae, exported = tmp_path / "acts", tmp_path / "run" / "sae", tmp_path / "saelens"
    harvest = [
        "harvest",
        "--model",
        model,
        "--site",
        "blocks.1.hook_resid_post",
        "--corpus",
        str(corpus_file),
        "--tokens",
        "3k",
        "--out",
        str(acts),
        "--context",
        "32",
        "--no-progress",
    ]
    assert main(harvest) == 0
    train = [
        "train",
        "--acts",
        str(acts),
        "--out",
        str(sae),
        "--arch",
        "topk",
        "--features",
        "4x",
        "--k",
        "4",
        "--batch-size",
        "256",
        "--no-progress",
    ]
    assert main(train) == 0
    assert main(train) == 2  # refuses to overwrite a trained SAE
    assert "already holds a trained SAE" in capsys.readouterr().err
    assert main(["eval", "--sae", str(sae), "--acts", str(acts), "--model", model]) == 0
    out = capsys.readouterr().out
    assert "FVU" in out and "loss recovered" in out.lower()
    assert (tmp_path / "run" / "eval.json").exists()
    assert f"wrote {tmp_path / 'run' / 'eval.json'}" in out
    assert main(["convert", str(sae), "--to", "saelens", "--out", str(exported)]) == 0
    assert (exported / "cfg.json").exists() and (exported / "sae_weights.safetensors").exists()


def test_an_interrupted_command_says_how_to_resume(monkeypatch, capsys):
    # The subpackage (`monoscope.train` itself is the Python helper `train`).
    train_package = sys.modules["monoscope.train"]

    def interrupted(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_package, "run", interrupted)
    assert main(["train", "--acts", "a.npy", "--out", "o"]) == 130
    assert "rerun the same command to resume" in capsys.readouterr().err
    assert main(["train", "--acts", "a.npy", "--out", "o", "--overwrite"]) == 130
    assert "rerun without --overwrite to resume" in capsys.readouterr().err
