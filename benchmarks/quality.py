"""SAE quality at a real budget: held-out FVU (all rows, without and on only the outlier rows),
loss recovered and dead latents of each architecture's published recipe, of each of our
short-run changes added to it alone, of all of them (--recipe short-run), of the defaults,
and of EleutherAI sparsify's trainer on the same batches.

Workload (issue 23): the built-in model's middle layer (blocks.15.hook_resid_post of
SmolLM2-135M, d = 576), --tokens of the built-in corpus (default 2M, stored in bf16) with 5% of
the contexts held out, one epoch of the train split, batch 4096, 16 x 576 latents, k = 32.
Each run is named in RUNS below: a recipe (`--recipe`) and the settings changed from it.
FVU is pooled and centred (monoscope.evaluate) on the held-out split: on all its rows ("FVU"),
without the outlier rows ("w/o out": norm over 10x the train split's median, the rows the
trainer skips by default), and on them alone ("out only"), with their count and share of the
held-out variance. Dead: latents that never fire on the held-out tokens. With --model, loss
recovered (zero and mean ablation) on --contexts held-out contexts.

The sparsify run is EleutherAI sparsify's SparseCoder and optimizer with its trainer's
defaults (k 32, sign SGD at 5e-3 / sqrt(latents / 2^14) wrapped in schedule-free averaging
with momentum 0.95, b_dec at the first batch's mean, the FVU loss, decoder rows renormalised
before each step and their gradients' parallel part removed), on the same batches in the same
order, raw activations; its averaged weights are saved in sparsify's format, read back with
monoscope's importer and evaluated like ours. Needs `pip install eai-sparsify==1.3.3
schedulefree` (with --runs including 'sparsify').

Run from the repository root:
    python benchmarks/quality.py --tokens 2M --model smollm2-135m --results runs/quality.jsonl
        [--acts STORE] [--runs 'topk paper,topk short-run,...'] [--list]
Without --acts, the store is harvested first into <out>/acts-<tokens> (2M tokens: about 25
minutes on 2 CPU cores; reused later). Each row is appended to --results as it finishes and a
rerun skips the runs already there, so a long sweep can be stopped and resumed. A topk run on
2M tokens takes about 4 minutes on 2 cores, relu and jumprelu about 12.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run from a checkout without installing the package

import torch  # noqa: E402

from monoscope.config_args import parse_count  # noqa: E402
from monoscope.evaluate import evaluate  # noqa: E402
from monoscope.harvest import ActivationStore, HarvestConfig  # noqa: E402
from monoscope.harvest import run as harvest  # noqa: E402
from monoscope.models import load_model  # noqa: E402
from monoscope.runtime import configure_threads  # noqa: E402
from monoscope.sae.topk import TopKSAE  # noqa: E402
from monoscope.train import TrainConfig  # noqa: E402
from monoscope.train import run as train  # noqa: E402

MODEL = "smollm2-135m"
SITE = "blocks.15.hook_resid_post"
BATCH = 4096

SHORT_RUN_CHANGES = {
    "lr 4e-3": dict(lr=4e-3),
    "W_dec lr x4": dict(decoder_lr_multiple=4.0),
    "beta1 0.8": dict(adam_beta1=0.8),
    "lr warm-up 10%": dict(lr_warmup_fraction=0.1),
    "W_dec start S^1/8": dict(decoder_init_power=0.125),
    "Adam eigenbasis": dict(adam_basis="eigen"),
    "idle momentum reset": dict(idle_momentum="reset"),
    "b_enc start 25%": dict(b_enc_init_share=0.25),
}
"""topk's short-run changes, each as the settings it changes from Gao et al.'s recipe."""


def _runs() -> dict[str, dict]:
    """{run name: TrainConfig settings}, in the order they run."""
    runs = {
        "topk paper": dict(arch="topk", recipe="paper"),
        "topk short-run": dict(arch="topk", recipe="short-run"),
        "topk default": dict(arch="topk"),
        "sparsify": dict(arch="topk", recipe="paper"),  # batches as ours; trained by sparsify
    }
    for change, settings in SHORT_RUN_CHANGES.items():
        runs[f"topk paper + {change}"] = dict(arch="topk", recipe="paper", **settings)
    runs["topk short-run + outliers kept"] = dict(
        arch="topk", recipe="short-run", outlier_multiple=0
    )
    runs["topk short-run + no grad clip"] = dict(arch="topk", recipe="short-run", grad_clip=0)
    runs["topk default + outliers kept"] = dict(arch="topk", outlier_multiple=0)
    for arch in ("batchtopk", "relu", "jumprelu"):
        for recipe in ("paper", "short-run", "default"):
            runs[f"{arch} {recipe}"] = dict(arch=arch, recipe=recipe)
    for change, settings in SHORT_RUN_CHANGES.items():
        undone = {name: getattr(TopKSAE.paper_recipe, name) for name in settings}
        runs[f"topk short-run - {change}"] = dict(arch="topk", recipe="short-run") | undone
    return runs


RUNS = _runs()


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", default="2M", help="store size to harvest (without --acts)")
    p.add_argument("--acts", default=None, help="activation store (default: harvest one)")
    p.add_argument("--out", default="runs/quality", help="folder for the SAEs (and the store)")
    p.add_argument("--model", default=None, help=f"splice into this model (e.g. {MODEL})")
    p.add_argument("--contexts", type=int, default=32, help="held-out contexts for the splice")
    p.add_argument("--runs", default="", help="comma-separated run names (default: all)")
    p.add_argument("--results", default=None, help="JSONL file the rows are appended to")
    p.add_argument("--list", action="store_true", help="print the run names and exit")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    args.runs = [r.strip() for r in args.runs.split(",") if r.strip()] or list(RUNS)
    unknown = [r for r in args.runs if r not in RUNS]
    if unknown:
        p.error(f"unknown runs {unknown}; --list shows them")
    return args


def store_for(args: argparse.Namespace) -> ActivationStore:
    """The store to train on: --acts, or --tokens of the built-in model harvested once."""
    if args.acts:
        return ActivationStore(args.acts)
    tokens = parse_count(args.tokens)
    path = Path(args.out) / f"acts-{args.tokens}"
    if (path / "manifest.json").exists():
        store = ActivationStore(path, allow_incomplete=True)
        if store.manifest.get("complete"):
            return store
    print(f"harvesting {tokens:,} tokens of {MODEL} {SITE} into {path} ...", flush=True)
    cfg = HarvestConfig(model=MODEL, sites=[SITE], tokens=tokens, out=str(path), dtype="bfloat16")
    return harvest(cfg)


def evaluated(sae, store: ActivationStore, lm, contexts: int) -> dict:
    """The table's metrics of `sae` on the held-out split: all rows, without and on only the
    outlier rows, and with a model the splice metrics."""
    held = evaluate(sae, store, lm, max_tokens=0, n_contexts=contexts)
    rec = held["reconstruction"]
    row = {
        "fvu": rec["fvu"],
        "fvu_without_outliers": rec["without_outliers"]["fvu"],
        "fvu_outliers_only": rec["outliers_only"]["fvu"],
        "heldout_outliers": rec["without_outliers"]["excluded"],
        "outlier_share_of_variance": rec["outliers_only"]["share_of_variance"],
        "l0": rec["l0"],
        "dead": rec["features"]["dead_fraction"],
    }
    if held["splice"] is not None:
        recovered = held["splice"]["loss_recovered"]
        row["loss_recovered_zero"] = recovered["zero_ablation"]
        row["loss_recovered_mean"] = recovered["mean_ablation"]
        row["ce"] = held["splice"]["ce"]
    return row


def config_of(name: str, store: ActivationStore, args: argparse.Namespace) -> TrainConfig:
    """Run `name`'s TrainConfig: one epoch of the store's train split, 16x latents, k 32."""
    steps = int(store.n_tokens * (1 - store.heldout_fraction)) // BATCH
    settings = dict(RUNS[name])
    if TrainConfig(arch=settings["arch"]).resolved().k is not None:
        settings["k"] = 32
    return TrainConfig(
        acts=str(store.path),
        out=str(Path(args.out) / name.replace(" ", "_").replace("/", "-")),
        site=store.resolve_site(None),
        features="16x",
        tokens=steps * BATCH,
        batch_size=BATCH,
        seed=args.seed,
        overwrite=True,
        progress=False,
        checkpoint_every=10**9,
        **settings,
    )


def measure(name: str, cfg: TrainConfig, store: ActivationStore, lm, contexts: int) -> dict:
    """Train as `cfg` says, then evaluate on the held-out split."""
    start = time.perf_counter()
    sae = train(cfg)
    seconds = time.perf_counter() - start
    row = {"run": name, "steps": sae.cfg.training["steps"], **evaluated(sae, store, lm, contexts)}
    return row | {"coefficient": sae.cfg.training["coefficient"], "seconds": seconds}


def import_sparsify() -> tuple:
    """(ScheduleFreeWrapper, SparseCoderConfig, SignSGD, SparseCoder), or exit saying what to
    install."""
    try:
        from schedulefree import ScheduleFreeWrapper
        from sparsify.config import SparseCoderConfig
        from sparsify.sign_sgd import SignSGD
        from sparsify.sparse_coder import SparseCoder
    except ImportError as err:
        raise SystemExit(
            f"the sparsify run needs `pip install eai-sparsify==1.3.3 schedulefree` ({err})"
        ) from err
    return ScheduleFreeWrapper, SparseCoderConfig, SignSGD, SparseCoder


def sparsify_reference(cfg: TrainConfig, store: ActivationStore, lm, contexts: int) -> dict:
    """Train sparsify's SparseCoder with its trainer's defaults on the batches our trainer
    would see for `cfg`, save it at cfg.out in sparsify's format, read it back and evaluate it
    as `measure` does."""
    ScheduleFreeWrapper, SparseCoderConfig, SignSGD, SparseCoder = import_sparsify()
    from monoscope.sae import load_sae
    from monoscope.train.sources import open_source
    from monoscope.train.trainer import _batches

    source = open_source(store.path, cfg.site)
    max_norm = cfg.outlier_multiple * source.median_norm()
    n_features = cfg.n_features(source.d)
    steps = cfg.tokens // cfg.batch_size
    torch.manual_seed(cfg.seed)
    coder = SparseCoder(source.d, SparseCoderConfig(num_latents=n_features, k=32))
    lr = 5e-3 / (n_features / 2**14) ** 0.5  # sparsify's default for "signum"
    opt = ScheduleFreeWrapper(SignSGD([dict(params=coder.parameters(), lr=lr)]), momentum=0.95)
    opt.train()
    start = time.perf_counter()
    for step, x in zip(range(steps), _batches(source, cfg, max_norm), strict=False):
        x = x.float()
        if step == 0:
            coder.b_dec.data = x.mean(0)
        coder.set_decoder_norm_to_unit_norm()
        coder(x).fvu.backward()
        coder.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
    opt.eval()  # the schedule-free average: what sparsify saves
    seconds = time.perf_counter() - start
    coder.save_to_disk(cfg.out)
    row = {"run": "sparsify", "steps": steps, **evaluated(load_sae(cfg.out), store, lm, contexts)}
    return row | {"seconds": seconds}


def _num(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


HEADER = (
    f"{'run':40} {'steps':>5} {'FVU':>7} {'w/o out':>7} {'out only':>8} {'out':>5} "
    f"{'out var':>7} {'L0':>6} {'dead':>6} {'LR zero':>8} {'LR mean':>8} "
    f"{'train s':>8}"
)


def format_row(row: dict) -> str:
    return (
        f"{row['run']:40} {row['steps']:5d} {_num(row['fvu'], '.4f'):>7} "
        f"{_num(row['fvu_without_outliers'], '.4f'):>7} "
        f"{_num(row['fvu_outliers_only'], '.4f'):>8} {row['heldout_outliers']:5d} "
        f"{_num(row['outlier_share_of_variance'], '.1%'):>7} {row['l0']:6.1f} "
        f"{row['dead']:6.1%} "
        f"{_num(row.get('loss_recovered_zero'), '.2%'):>8} "
        f"{_num(row.get('loss_recovered_mean'), '.2%'):>8} {row['seconds']:8.0f}"
    )


def finished_rows(results: str | None) -> dict[str, dict]:
    """{run: row} of the rows already in the results file (a torn last line is ignored)."""
    if not results or not Path(results).exists():
        return {}
    rows = {}
    for line in Path(results).read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        rows[row["run"]] = row
    return rows


def main() -> None:
    args = parse_args()
    if args.list:
        print("\n".join(RUNS))
        return
    if "sparsify" in args.runs:
        import_sparsify()  # before any training: a missing package fails at once
    threads = configure_threads()
    store = store_for(args)
    lm = load_model(args.model) if args.model else None
    done = finished_rows(args.results)
    print(f"store {store.path}: {store.n_tokens:,} tokens, batch {BATCH}; {threads} threads")
    print(HEADER, flush=True)
    for name in args.runs:
        if name in done:
            print(format_row(done[name]), flush=True)
            continue
        cfg = config_of(name, store, args)
        if name == "sparsify":
            row = sparsify_reference(cfg, store, lm, args.contexts)
        else:
            row = measure(name, cfg, store, lm, args.contexts)
        print(format_row(row), flush=True)
        if args.results:
            with open(args.results, "a") as out:
                out.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
