"""monoscope.evaluate: metrics against hand-computed values, the streaming accumulator, outliers,
splicing into a tiny model (identity, perfect and zero SAEs), and the store checks."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from monoscope.artifacts import write_sealed_json
from monoscope.evaluate import (
    EvalConfig,
    ReconstructionStats,
    dead_fraction,
    dense_fraction,
    densities,
    density_histogram,
    evaluate,
    explained_variance,
    firing_counts,
    format_table,
    fvu,
    heldout_contexts,
    mean_l0,
    mse,
    mse_per_element,
    run,
)
from monoscope.harvest import ActivationStore, HarvestConfig, StoreError, heldout_mask
from monoscope.harvest import run as harvest
from monoscope.harvest.shards import write_shard

SITE = "blocks.1.hook_resid_post"
D = 32  # width of the tiny llama's residual stream


class StandInSAE(nn.Module):
    """A ReLU SAE with given weights, on the protocol the evaluation reads: cfg, encode, decode,
    finish_reconstruction."""

    def __init__(self, w_enc: torch.Tensor, w_dec: torch.Tensor, site: str = SITE) -> None:
        super().__init__()
        d_in, n_features = w_enc.shape
        self.cfg = SimpleNamespace(
            d_in=d_in, n_features=n_features, site=site, model=None, transcoder=False
        )
        self.w_enc = nn.Parameter(w_enc)  # [d_in, n_features]
        self.w_dec = nn.Parameter(w_dec)  # [n_features, d_in]

    def encode(self, x: torch.Tensor) -> torch.Tensor:  # [b, d_in] -> [b, n_features]
        return torch.relu(x @ self.w_enc)

    def decode(self, f: torch.Tensor) -> torch.Tensor:  # [b, n_features] -> [b, d_in]
        return f @ self.w_dec

    def finish_reconstruction(self, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x_hat  # no skip connection, no per-token normalisation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


def random_sae(d_in: int = D, n_features: int = 4 * D, site: str = SITE) -> StandInSAE:
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(d_in, n_features, generator=gen) / d_in**0.5
    return StandInSAE(w, w.T.clone(), site)


def perfect_sae(d_in: int = D) -> StandInSAE:
    """Features ±q_i of an orthonormal basis q: relu(y) − relu(−y) = y, so decode(encode(x)) = x."""
    q, _ = torch.linalg.qr(torch.randn(d_in, d_in, generator=torch.Generator().manual_seed(1)))
    return StandInSAE(torch.cat([q, -q], dim=1), torch.cat([q.T, -q.T], dim=0))


def zero_sae(d_in: int = D) -> StandInSAE:
    sae = random_sae(d_in)
    sae.w_dec.data.zero_()  # decode returns 0: the splice is a zero ablation
    return sae


# -- metrics -----------------------------------------------------------------------------------


def test_fvu_against_a_hand_computed_case():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 9.0]])
    x_hat = torch.tensor([[1.0, 1.0], [3.0, 5.0], [4.0, 9.0]])
    # Mean over tokens (3, 5); deviations (-2,-3), (0,-1), (2,4): 4+9+0+1+4+16 = 34.
    # Errors (0,1), (0,-1), (1,0): 3. So FVU = 3/34, not 3/136 (uncentred: Σx² = 136).
    assert fvu(x, x_hat) == pytest.approx(3 / 34)
    assert explained_variance(x, x_hat) == pytest.approx(31 / 34)
    assert mse(x, x_hat) == pytest.approx(1.0)  # 3 squared error over 3 tokens
    assert mse_per_element(x, x_hat) == pytest.approx(0.5)


def test_fvu_of_perfect_and_mean_reconstructions():
    x = torch.randn(64, 8) * 3 + 5
    assert fvu(x, x) == 0.0
    assert fvu(x, x.mean(dim=0).expand_as(x)) == pytest.approx(1.0)
    assert torch.isnan(torch.tensor(fvu(torch.ones(4, 2), torch.zeros(4, 2))))  # no variance


def test_feature_densities_dead_dense_and_histogram():
    f = torch.zeros(10, 5)
    f[:, 0] = 1.0  # every token: density 1
    f[3, 1] = 0.5  # one token: 0.1, not dense (the threshold is strict)
    f[:2, 3] = 2.0  # feature 2 never fires; feature 3: 0.2
    f[5:, 4] = 0.1  # 0.5
    counts = firing_counts(f)
    assert counts.tolist() == [10, 1, 0, 2, 5]
    density = densities(counts, 10)
    assert dead_fraction(density) == pytest.approx(0.2)
    assert dense_fraction(density) == pytest.approx(0.6)
    assert mean_l0(f) == pytest.approx(1.8)
    hist = density_histogram(counts, 10)
    # One decade [-1, 0] in 10 bins: log10 0.1 = -1, log10 0.2 = -0.70, log10 0.5 = -0.30, 0.
    assert hist["counts"] == [1, 0, 0, 1, 0, 0, 1, 0, 0, 1] and hist["dead"] == 1
    assert hist["log10_edges"][0] == -1 and hist["log10_edges"][-1] == 0


def test_streaming_stats_equal_the_one_shot_metrics():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(100, 8, generator=gen, dtype=torch.float64) + 1e7  # a large shared offset
    x_hat = x + 0.3 * torch.randn(100, 8, generator=gen, dtype=torch.float64)
    f = torch.relu(torch.randn(100, 20, generator=gen))
    stats = ReconstructionStats()
    for rows in torch.arange(100).split([7, 30, 1, 62]):
        stats.update(x[rows], x_hat[rows], f[rows])
    result = stats.result()
    assert result["tokens"] == 100 and "without_outliers" not in result
    # The offset cancels in FVU; a one-pass Σx² − n x̄² would have lost it to rounding.
    assert result["fvu"] == pytest.approx(fvu(x - 1e7, x_hat - 1e7), rel=1e-9)
    assert result["mse"] == pytest.approx(mse(x, x_hat))
    assert result["mse_per_element"] == pytest.approx(mse_per_element(x, x_hat))
    assert result["l0"] == pytest.approx(mean_l0(f))
    dead = dead_fraction(densities(firing_counts(f), 100))
    assert result["features"]["dead_fraction"] == pytest.approx(dead)
    torch.testing.assert_close(stats.mean, x.mean(dim=0))


def test_outlier_tokens_are_reported_apart():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(50, 4, generator=gen)
    x[[3, 17, 40]] *= 1000  # a few tokens with huge norms, like SmolLM2's after BOS
    x_hat = x + 0.1 * torch.randn(50, 4, generator=gen)
    f = torch.relu(torch.randn(50, 6, generator=gen))
    median = float(x.norm(dim=-1).median())
    stats = ReconstructionStats(median_norm=median, outlier_multiple=10.0)
    for rows in torch.arange(50).split(16):
        stats.update(x[rows], x_hat[rows], f[rows])
    result = stats.result()
    kept = torch.ones(50, dtype=torch.bool)
    kept[[3, 17, 40]] = False
    clean = result["without_outliers"]
    assert clean["excluded"] == 3 and clean["tokens"] == 47 and result["tokens"] == 50
    assert clean["threshold_norm"] == pytest.approx(10 * median)
    assert clean["fvu"] == pytest.approx(fvu(x[kept], x_hat[kept]))
    assert clean["l0"] == pytest.approx(mean_l0(f[kept]))
    assert result["fvu"] == pytest.approx(fvu(x, x_hat))


# -- on a store --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tiny_llama, corpus_file, tmp_path_factory) -> ActivationStore:
    cfg = HarvestConfig(
        sites=[SITE],
        corpus=str(corpus_file),
        tokens=600,
        out=str(tmp_path_factory.mktemp("eval") / "acts"),
        context=16,
        batch_tokens=64,
        shard_tokens=150,
        heldout_fraction=0.3,
        progress=False,
    )
    return harvest(cfg, tiny_llama)


def heldout_acts(store: ActivationStore) -> torch.Tensor:
    return torch.cat([acts for acts, _ in store.rows(SITE, split="heldout")])  # [n, D]


def test_run_writes_eval_json_and_plot(store, tmp_path):
    sae = random_sae()
    cfg = EvalConfig(sae=str(tmp_path / "sae"), acts=str(store.path), batch_size=32, plots=True)
    report = run(cfg, sae=sae)
    assert json.loads((tmp_path / "eval.json").read_text()) == report
    assert (tmp_path / "plots" / "feature_density.png").stat().st_size > 0
    x = heldout_acts(store)
    with torch.no_grad():
        f = sae.encode(x)
        x_hat = sae.decode(f)
    rec = report["reconstruction"]
    assert rec["tokens"] == x.shape[0] > 100
    assert rec["fvu"] == pytest.approx(fvu(x, x_hat))
    assert rec["l0"] == pytest.approx(mean_l0(f))
    assert rec["without_outliers"]["median_norm"] == store.median_norm(SITE)
    assert report["sae"]["path"] == cfg.sae and report["splice"] is None
    table = format_table(report)
    rows = f"the store's held-out split: all {x.shape[0]:,} tokens"
    assert report["store"]["rows"] == rows and "FVU" in table and f"rows: {rows}" in table


def test_the_train_split_can_be_evaluated_in_sample(store, tiny_llama):
    sae = random_sae()
    report = evaluate(sae, store, split="train", batch_size=32)
    x = torch.cat([acts for acts, _ in store.rows(SITE, split="train")])
    with torch.no_grad():
        x_hat = sae.decode(sae.encode(x))
    assert report["store"]["split"] == "train"
    assert report["reconstruction"]["tokens"] == x.shape[0]
    assert report["reconstruction"]["fvu"] == pytest.approx(fvu(x, x_hat))
    assert "the store's train split (in-sample): all" in format_table(report)
    with pytest.raises(ValueError, match="held-out contexts"):
        evaluate(sae, store, tiny_llama, split="train")
    with pytest.raises(ValueError, match="split must be heldout, train or all"):
        EvalConfig(split="both")
    capped = evaluate(sae, store, max_tokens=50)
    assert capped["reconstruction"]["tokens"] == 50
    expected = "the first 50 tokens of the store's held-out split (--max-tokens)"
    assert capped["store"]["rows"] == expected


def test_splice_identity_perfect_and_zero_saes(store, tiny_llama):
    perfect = evaluate(perfect_sae(), store, tiny_llama, n_contexts=6, splice_batch=4)
    splice = perfect["splice"]
    ce = splice["ce"]
    assert splice["contexts"] == 6 and splice["predictions"] == 6 * 14
    assert ce["sae_with_error"] == pytest.approx(ce["clean"], abs=1e-6)
    assert splice["kl"]["sae_with_error"] == pytest.approx(0.0, abs=1e-6)
    # The ablations must move the loss (a random model's loss may fall as well as rise).
    assert abs(ce["zero_ablation"] - ce["clean"]) > 1e-3
    assert abs(ce["mean_ablation"] - ce["clean"]) > 1e-3
    assert splice["loss_recovered"]["zero_ablation"] == pytest.approx(1.0, abs=1e-3)
    assert splice["loss_recovered"]["mean_ablation"] == pytest.approx(1.0, abs=1e-3)
    assert perfect["reconstruction"]["fvu"] == pytest.approx(0.0, abs=1e-9)

    zero = evaluate(zero_sae(), store, tiny_llama, n_contexts=6, splice_batch=4)["splice"]
    assert zero["ce"]["sae"] == zero["ce"]["zero_ablation"]
    assert zero["loss_recovered"]["zero_ablation"] == 0.0
    assert zero["ce"]["clean"] == ce["clean"]
    assert "loss recovered" in format_table({**perfect, "splice": splice})


def test_heldout_contexts_are_the_stores(store, tiny_llama):
    contexts = heldout_contexts(store.manifest, tiny_llama.tokenizer, 3)
    assert contexts.shape == (3, 16)
    assert (contexts[:, 0] == store.manifest["bos_token_id"]).all()
    _, meta = next(store.rows(SITE, split="heldout"))
    first = meta["context_index"][0]
    assert heldout_mask(first, store.heldout_fraction)
    rows = meta["context_index"] == first
    assert meta["token_ids"][rows].tolist() == contexts[0, 1:].tolist()


def test_site_and_width_mismatches_are_refused(store):
    with pytest.raises(StoreError, match=r"reads site 'blocks.0.hook_resid_post'.*holds"):
        evaluate(random_sae(site="blocks.0.hook_resid_post"), store)
    with pytest.raises(StoreError, match=r"d_in 16, but site 'blocks.1.hook_resid_post'.*32"):
        evaluate(random_sae(d_in=16), store)


def test_an_array_file_is_evaluated_on_the_rows_the_trainer_held_out(tmp_path, tiny_llama):
    from safetensors.torch import save_file

    from monoscope.train.sources import open_source

    x = torch.randn(400, D, generator=torch.Generator().manual_seed(3)) * 2 + 1
    npy, st = tmp_path / "acts.npy", tmp_path / "acts.safetensors"
    np.save(npy, x.numpy())
    save_file({"acts": x}, st)
    sae = random_sae(site=None)
    held = torch.cat(list(open_source(npy).heldout(64)))  # the trainer's held-out rows
    assert held.shape[0] == 20
    with torch.no_grad():
        x_hat = sae.decode(sae.encode(held))
    for path in (npy, st):
        report = evaluate(sae, str(path), batch_size=8)
        assert report["reconstruction"]["tokens"] == 20
        assert report["reconstruction"]["fvu"] == pytest.approx(fvu(held, x_hat))
        assert report["store"] == {
            "path": str(path),
            "model": None,
            "split": "heldout",
            "max_tokens": 200_000,
            "rows": f"the held-out 5% of {path.name}: rows 380..399",
            "first_row": 380,
            "last_row": 399,
            "n_rows": 400,
        }
    train = evaluate(sae, npy, split="train", max_tokens=100)["reconstruction"]
    with torch.no_grad():
        x_hat = sae.decode(sae.encode(x[:100]))
    assert train["tokens"] == 100 and train["fvu"] == pytest.approx(fvu(x[:100], x_hat))
    assert "an unnamed site" in format_table(report)
    with pytest.raises(StoreError, match=r"d_in 16, but .*acts.npy has width 32"):
        evaluate(random_sae(d_in=16), npy)
    with pytest.raises(ValueError, match="no tokens to run the model on"):
        evaluate(sae, npy, tiny_llama)
    x[390, 4] = float("inf")
    np.save(npy, x.numpy())
    with pytest.raises(StoreError, match="row 390"):
        evaluate(sae, npy)


def test_nan_in_a_store_row_names_the_shard_and_row(store, tmp_path):
    folder = tmp_path / "acts"
    shutil.copytree(store.path, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    index, entry = 2, manifest["shards"][2]
    tensors = ActivationStore(folder).load_shard(index)
    row = int(heldout_mask(tensors["context_index"], store.heldout_fraction).nonzero()[0, 0])
    tensors[f"acts.{SITE}"][row, 5] = float("nan")
    entry.update(write_shard(folder / entry["file"], tensors))  # new size and checksum
    write_sealed_json(folder / "manifest.json", manifest)
    with pytest.raises(StoreError, match=rf"shard-00002.safetensors, row {row}\b"):
        evaluate(random_sae(), folder)


def test_plots_need_matplotlib_and_config_is_validated(store, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    cfg = EvalConfig(sae=str(tmp_path / "sae"), acts=str(store.path), plots=True)
    with pytest.raises(ImportError, match=r"pip install monoscope\[plots\]"):
        run(cfg, sae=random_sae())
    assert not (tmp_path / "eval.json").exists()
    assert EvalConfig(sae="runs/a/sae").out_path == Path("runs/a/eval.json")
    with pytest.raises(ValueError, match="batch_size"):
        EvalConfig(batch_size=0)
    with pytest.raises(ValueError, match="outlier_multiple"):
        EvalConfig(outlier_multiple=0.5)
    with pytest.raises(ValueError, match="is a folder: give the report's file"):
        EvalConfig(out=str(tmp_path))


# -- which rows, and the outlier rows apart ------------------------------------------------------


def test_outlier_subsets_against_hand_computed_values():
    # Median norm 1, multiple 2: rows of norm over 2 are outliers (the last two).
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [10.0, 0.0], [0.0, 10.0]])
    x_hat = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0], [8.0, 0.0], [0.0, 9.0]])
    f = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0], [1.0, 1.0], [0.0, 1.0]])
    stats = ReconstructionStats(median_norm=1.0, outlier_multiple=2.0)
    for rows in torch.arange(5).split(2):  # the outliers arrive in two batches
        stats.update(x[rows], x_hat[rows], f[rows])
    result = stats.result()
    # All rows: mean (2.4, 2.4); per dimension Σ(x − 2.4)² = 1.96+5.76+1.96+57.76+5.76 = 73.2,
    # so V = 146.4; squared errors 0, 1, 0, 4, 1: SE = 6.
    assert result["fvu"] == pytest.approx(6 / 146.4)
    # Inliers: mean (2/3, 2/3), Σ‖x − x̄‖² = 5/9 + 5/9 + 2/9 = 4/3; SE = 1.
    clean = result["without_outliers"]
    assert clean["excluded"] == 2 and clean["tokens"] == 3
    assert clean["excluded_fraction"] == pytest.approx(0.4)
    assert clean["threshold_norm"] == 2.0
    assert clean["fvu"] == pytest.approx(0.75)
    assert clean["l0"] == pytest.approx(1.0)  # 1, 0, 2 features fire
    # Outliers: mean (5, 5), Σ‖x − x̄‖² = 50 + 50; SE = 4 + 1. About the mean of all rows
    # (2.4, 2.4) they hold 2 × (7.6² + 2.4²) = 127.04 of the 146.4.
    alone = result["outliers_only"]
    assert alone["tokens"] == 2 and alone["fvu"] == pytest.approx(0.05)
    assert alone["mse"] == pytest.approx(2.5) and alone["l0"] == pytest.approx(1.5)
    assert alone["share_of_variance"] == pytest.approx(127.04 / 146.4)
    assert alone["share_of_squared_error"] == pytest.approx(5 / 6)


def test_no_outliers_leaves_the_outlier_metrics_undefined():
    x = torch.randn(20, 3, generator=torch.Generator().manual_seed(0))
    stats = ReconstructionStats(median_norm=float(x.norm(dim=-1).median()), outlier_multiple=10)
    stats.update(x, 0.5 * x, torch.ones(20, 4))
    result = stats.result()
    assert result["without_outliers"]["fvu"] == pytest.approx(result["fvu"])
    assert result["without_outliers"]["excluded_fraction"] == 0.0
    alone = result["outliers_only"]
    assert alone["tokens"] == 0 and alone["fvu"] is None and alone["share_of_variance"] == 0.0


def outlier_array(path: Path) -> torch.Tensor:
    """[400, D] rows, every 50th (8 of them, some in the held-out last 20) of a huge norm."""
    x = torch.randn(400, D, generator=torch.Generator().manual_seed(5)) + 0.5
    x[::50] = x[::50] * 3 + 400 * torch.eye(D)[7]  # like SmolLM2's first position after BOS
    np.save(path, x.numpy())
    return x


def test_split_all_of_an_array_and_its_outliers(tmp_path):
    x = outlier_array(tmp_path / "acts.npy")
    sae = random_sae(site=None)
    with torch.no_grad():
        x_hat = sae.decode(sae.encode(x))
    # The trainer's rule, computed here: norm over 10 × the median norm of the first 380 rows.
    out = x.norm(dim=-1) > 10 * x[:380].norm(dim=-1).median()
    assert out.sum() == 8
    report = evaluate(sae, tmp_path / "acts.npy", split="all", batch_size=64)
    rec = report["reconstruction"]
    assert rec["tokens"] == 400 and rec["fvu"] == pytest.approx(fvu(x, x_hat))
    assert rec["without_outliers"]["fvu"] == pytest.approx(fvu(x[~out], x_hat[~out]))
    assert rec["outliers_only"]["fvu"] == pytest.approx(fvu(x[out], x_hat[out]))
    assert rec["without_outliers"]["excluded_fraction"] == pytest.approx(8 / 400)
    centred = (x.double() - x.double().mean(dim=0)).pow(2).sum(dim=-1)
    share = float(centred[out].sum() / centred.sum())
    assert rec["outliers_only"]["share_of_variance"] == pytest.approx(share)
    assert report["store"]["rows"] == "all 400 rows of acts.npy: rows 0..399"
    assert (report["store"]["first_row"], report["store"]["last_row"]) == (0, 399)
    table = format_table(report)
    assert "rows: all 400 rows of acts.npy: rows 0..399" in table
    assert "outliers only" in table and "8 of 400 tokens (2.000%)" in table
    assert f"{share:.1%} of the variance" in table
    capped = evaluate(sae, tmp_path / "acts.npy", max_tokens=10)["store"]
    expected = "the first 10 of the held-out 5% of acts.npy (--max-tokens): rows 380..389"
    assert capped["rows"] == expected
    train = evaluate(sae, tmp_path / "acts.npy", split="train")["store"]["rows"]
    assert train == "the train 95% of acts.npy (in-sample): rows 0..379"
    np.save(tmp_path / "one.npy", x[:1].numpy())  # 1 row: the trainer holds it out
    with pytest.raises(StoreError, match=r"one.npy has no train rows \(1 in all\)"):
        evaluate(sae, tmp_path / "one.npy", split="train")


def test_split_all_of_a_store_measures_both_splits(store):
    sae = random_sae()
    x = torch.cat([acts for acts, _ in store.rows(SITE, split="all")])
    with torch.no_grad():
        x_hat = sae.decode(sae.encode(x))
    report = evaluate(sae, store, split="all", max_tokens=0, batch_size=64)
    assert report["reconstruction"]["tokens"] == x.shape[0] == store.n_tokens
    assert report["reconstruction"]["fvu"] == pytest.approx(fvu(x, x_hat))
    expected = f"both splits of the store (held-out and train): all {x.shape[0]:,} tokens"
    assert report["store"]["rows"] == expected


def test_eval_command_takes_split_all(tiny_llama, tmp_path, capsys):
    from monoscope.cli import main
    from monoscope.testing import tiny_sae

    tiny_sae(tiny_llama, SITE).save(tmp_path / "sae")
    outlier_array(tmp_path / "acts.npy")
    args = ["eval", "--sae", str(tmp_path / "sae"), "--acts", str(tmp_path / "acts.npy")]
    assert main([*args, "--split", "all", "--outlier-multiple", "10"]) == 0
    printed = capsys.readouterr().out
    assert "rows: all 400 rows of acts.npy: rows 0..399" in printed
    assert "8 of 400 tokens" in printed
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["store"]["split"] == "all" and saved["reconstruction"]["tokens"] == 400


def test_the_reconstruction_includes_a_skip_connection_and_transcoders_are_refused(tmp_path):
    from monoscope.sae import SAEConfig, build_sae

    cfg = SAEConfig(arch="topk", d_in=D, n_features=4 * D, k=4, site=None, skip_connection=True)
    sae = build_sae(cfg, seed=0).eval()
    with torch.no_grad():
        sae.W_skip.copy_(torch.randn(D, D, generator=torch.Generator().manual_seed(2)) / D)
    x = torch.randn(200, D, generator=torch.Generator().manual_seed(4))
    np.save(tmp_path / "acts.npy", x.numpy())
    with torch.no_grad():
        x_hat = sae.decode(sae.encode(x)) + x @ sae.W_skip.T  # the skip term, written out
    report = evaluate(sae, tmp_path / "acts.npy", split="all")
    assert report["reconstruction"]["fvu"] == pytest.approx(fvu(x, x_hat), rel=1e-5)
    sae.cfg.transcoder, sae.cfg.site, sae.cfg.output_site = True, SITE, "blocks.1.hook_mlp_out"
    with pytest.raises(ValueError, match=rf"is a transcoder \({SITE} -> blocks.1.hook_mlp_out\)"):
        evaluate(sae, tmp_path / "acts.npy")
