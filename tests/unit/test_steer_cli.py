"""`monoscope steer`, `attribute` and `features-for` on a tiny model and SAE saved to folders."""

from __future__ import annotations

import json

import pytest

from monoscope.cli import main
from monoscope.harvest import HarvestConfig
from monoscope.harvest import run as harvest
from monoscope.steer import SteeringSpec
from monoscope.testing import max_act_feature_store, tiny_sae

SITE = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def sae_dir(tiny_llama, tmp_path_factory):
    folder = tmp_path_factory.mktemp("steer_cli") / "sae"
    tiny_sae(tiny_llama, SITE, "topk").save(folder)  # names the tiny model's folder
    return folder


@pytest.fixture(scope="module")
def acts_dir(tiny_llama, corpus_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("steer_acts") / "acts"
    cfg = HarvestConfig(
        model=tiny_llama.name,
        sites=[SITE],
        corpus=str(corpus_file),
        tokens=600,
        out=str(out),
        context=32,
        progress=False,
    )
    return harvest(cfg, tiny_llama).path


def test_steer_prints_both_continuations_and_writes_json(sae_dir, tmp_path, capsys):
    out = tmp_path / "steer.json"
    argv = ["steer", "--sae", str(sae_dir), "--feature", "3=6", "--feature", "9=-2"]
    argv += ["--prompt", "the model", "--max-new-tokens", "4", "--n", "2", "--json", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "unsteered:" in text and "steered:" in text and "sample 2" in text
    assert "clamp 3 6; clamp 9 -2" in text and "top logit tokens" in text
    result = json.loads(out.read_text())
    assert len(result["baseline"]) == 2 and result["sampling"]["max_new_tokens"] == 4
    spec = SteeringSpec.from_json(result["runs"][0]["spec"])
    assert [e.feature for e in spec.edits] == [3, 9] and spec.saes() == [str(sae_dir)]


def test_steer_sweep_with_max_activations_from_a_store(sae_dir, acts_dir, capsys):
    argv = ["steer", "--sae", str(sae_dir), "--feature", "3", "--sweep", "0,2x,5x"]
    argv += ["--prompt", "the model", "--max-new-tokens", "3", "--acts", str(acts_dir)]
    argv += ["--temperature", "0"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "[0]" in text and "[2x]" in text and "[5x]" in text
    assert f"activation store {acts_dir}" in text


def test_steer_finds_the_feature_store_beside_the_sae(tiny_llama, tmp_path, capsys):
    # monoscope demo's layout: runs/demo/sae and runs/demo/features.db
    sae = tiny_sae(tiny_llama, SITE, "topk")
    sae.save(tmp_path / "sae")
    argv = ["steer", "--sae", str(tmp_path / "sae"), "--feature", "3=2x", "--prompt", "the"]
    argv += ["--max-new-tokens", "2", "--temperature", "0"]
    max_act_feature_store(tmp_path / "features.db", sae.cfg.n_features, False).close()
    assert main(argv) == 2  # an unfinished store is not used, and says why
    err = capsys.readouterr().err
    assert "not using" in err and "incomplete" in err and "no max source" in err
    (tmp_path / "features.db").unlink()
    max_act_feature_store(tmp_path / "features.db", sae.cfg.n_features).close()
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert f"from {tmp_path / 'features.db'}" in captured.err
    assert "clamp 3 2x" in captured.out and "= 8" in captured.out  # 2 x (1 + 3)


def test_steer_with_a_spec_file(sae_dir, tmp_path, capsys):
    spec = {"edits": [{"sae": str(sae_dir), "feature": 5, "mode": "ablate"}]}
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    argv = ["steer", "--spec", str(path), "--prompt", "a token", "--max-new-tokens", "2"]
    assert main(argv) == 0
    assert "ablate 5" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--feature", "3=lots"], "strength 'lots' is not a number"),
        (["--feature", "3=2x"], "no max source was given"),
        (["--feature", "99999=1"], "feature 99999 does not exist"),
        (["--feature", "3=2", "--model", "gpt2-like"], "trained on model"),
        (["--feature", "3=1", "--prompt", "x" * 300], "over the context length"),
        (["--feature", "3=2", "--sweep", "0,1"], "with --sweep give features as IDs only"),
    ],
)
def test_steer_bad_input_is_one_line(sae_dir, capsys, extra, message):
    argv = ["steer", "--sae", str(sae_dir), "--prompt", "the model", "--max-new-tokens", "2"]
    assert main(argv + extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("monoscope steer: error:") and message in err[-1]


def test_attribute_prints_a_ranked_table(sae_dir, tmp_path, capsys):
    out = tmp_path / "attr.json"
    argv = ["attribute", "--sae", str(sae_dir), "--prompt", "the model reads a tok"]
    argv += ["--target", "e", "--top", "5", "--json", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "attribution" in text and "ablation" in text and "Spearman" in text
    assert len(json.loads(out.read_text())["rows"]) == 5
    assert main([*argv[:5], "--target", "en"]) == 2
    assert "'en' is 2 tokens ['e', 'n']" in capsys.readouterr().err


def test_features_for_span_and_contrast(sae_dir, tmp_path, capsys):
    base = ["features-for", "--sae", str(sae_dir), "--top", "3"]
    assert main([*base, "--prompt", "the [[model]] reads"]) == 0
    assert "features most active on 'model'" in capsys.readouterr().out
    negatives = tmp_path / "negative.txt"
    negatives.write_text("a token\n\nit writes\n")
    argv = [*base, "--positive", "residual stream", "--negative", f"@{negatives}"]
    assert main(argv) == 0
    assert "separating 1 positive from 2 negative prompts" in capsys.readouterr().out
    assert main([*base]) == 2
    assert "give either --prompt" in capsys.readouterr().err
