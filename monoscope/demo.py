"""`monoscope demo`: the pipeline on the built-in model and corpus, end to end.

Harvest a middle-layer residual stream of SmolLM2-135M on the built-in corpus, train a TopK SAE
on it, evaluate it on held-out tokens (FVU, L0, dead features, loss recovered when spliced
into the model), and analyze its features into runs/demo/features.db for the browser. Each
stage reuses what a previous run finished, so a rerun is quick.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monoscope.analyze import AnalyzeConfig
from monoscope.analyze import run as run_analyze
from monoscope.analyze.layout import require_umap
from monoscope.evaluate import EvalConfig, format_table
from monoscope.evaluate import run as run_eval
from monoscope.harvest import ActivationStore, HarvestConfig
from monoscope.harvest import run as run_harvest
from monoscope.models import LanguageModel, load_model
from monoscope.sae.training import RECIPES
from monoscope.train import TrainConfig
from monoscope.train import run as run_train

MODEL = "smollm2-135m"
SCORERS = "detection,embedding"
"""The demo's scorers: detection as the paper's judge-based check, embedding as a cheap one."""


@dataclass
class DemoConfig:
    out: str = "runs/demo"
    """Run folder: acts/ (activation store), sae/ (the SAE), eval.json and features.db go here."""
    tokens: int = 200_000
    """Tokens to harvest (5% of contexts are held out for evaluation)."""
    site: str = "blocks.15.hook_resid_post"
    """Site to harvest (the middle of SmolLM2-135M's 30 layers)."""
    arch: str = "topk"
    """SAE architecture: relu, topk, batchtopk or jumprelu."""
    features: str = "16x"
    """Dictionary size: a count or a multiple of d_model."""
    k: int | None = None
    """Active latents per token (topk, batchtopk; unset: 32)."""
    recipe: str = field(default="short-run", metadata={"choices": RECIPES})
    """Training recipe (see `monoscope train --recipe`): the demo's 200k tokens are a short run."""
    model_dtype: str = "float32"
    """Model compute dtype (bfloat16 is about twice as fast on recent CPUs)."""
    explain: bool = True
    """Explain and score a sample of features with the built-in model as the LLM, so the
    browser shows explanations (--no-explain skips it)."""
    explain_features: int = 12
    """Features the demo explains and scores (a random sample of those that fired)."""
    overwrite: bool = False
    """Start over instead of reusing what OUT holds."""


def run(cfg: DemoConfig) -> dict:
    root = Path(cfg.out)
    sae_dir = root / "sae"
    # Built first: a bad option (say --k with relu) fails before the harvest.
    train_cfg = TrainConfig(
        acts=str(root / "acts"),
        out=str(sae_dir),
        arch=cfg.arch,
        features=cfg.features,
        k=cfg.k,
        recipe=cfg.recipe,
        overwrite=cfg.overwrite,
        dead_window=65_536,
    )
    lm = load_model(MODEL, dtype=cfg.model_dtype)
    print(f"[1/5] harvest {cfg.tokens:,} tokens of {cfg.site} from {MODEL} -> {root / 'acts'}")
    store = run_harvest(
        HarvestConfig(
            model=MODEL,
            sites=[cfg.site],
            corpus="builtin",
            tokens=cfg.tokens,
            out=str(root / "acts"),
            dtype="bfloat16",
            model_dtype=cfg.model_dtype,
            overwrite=cfg.overwrite,
        ),
        lm,
    )
    print(
        f"      {store.n_tokens:,} tokens in {len(store.shards)} shard(s), "
        f"mean |x| {store.mean_norm():.1f}"
    )
    k = train_cfg.resolved().k
    sparsity = f", k={k}" if k is not None else ""
    print(f"[2/5] train a {cfg.arch} SAE ({cfg.features} features{sparsity}) -> {sae_dir}")
    if (
        (sae_dir / "config.json").exists()
        and not (sae_dir / "checkpoint.json").exists()
        and not cfg.overwrite
    ):
        print("      already trained (pass --overwrite to retrain)")
    else:
        run_train(train_cfg)
    print("[3/5] evaluate on held-out tokens, with the SAE spliced into the model")
    report = run_eval(
        EvalConfig(sae=str(sae_dir), acts=str(store.path), model=MODEL, n_contexts=32),
        lm=lm,
    )
    print(format_table(report))
    analyze_features(root, sae_dir, store, lm, cfg.overwrite)
    if cfg.explain:
        explain_features(root / "features.db", lm, cfg.explain_features)
    return report


def explain_features(db: Path, lm: LanguageModel, n: int) -> None:
    """Step 5: explanations and scores of a few features, the built-in model as the LLM (a
    135M explainer is weak: this shows the pipeline a stronger model plugs into)."""
    from monoscope.interpret import ExplainConfig, ScoreConfig, run
    from monoscope.interpret.embedding import EmbedderMissingError, default_model_dir
    from monoscope.interpret.report import format_run

    print(f"[5/5] explain and score {n} random features with the local {MODEL} -> {db}")
    scorers = SCORERS
    try:
        default_model_dir()
    except EmbedderMissingError as err:
        print(f"      no embedding scorer: {err}")
        scorers = "detection"
    common: dict[str, Any] = {"db": str(db), "features": f"random:{n}", "progress": False}
    print(format_run("explain", run(ExplainConfig(**common), lm=lm)))
    caps: dict[str, Any] = {"max_activating": 8, "max_non_activating": 8}  # minutes on 2 cores
    print(format_run("score", run(ScoreConfig(**common, scorers=scorers, **caps), lm=lm)))
    print(f"      stronger explainers: monoscope explain {db} --backend openai --model NAME ...")


def analyze_features(
    root: Path, sae_dir: Path, store: ActivationStore, lm: LanguageModel, overwrite: bool
) -> None:
    """Step 4: the feature store, with the map when umap-learn is installed."""
    out = root / "features.db"
    print(f"[4/5] analyze every feature (examples, logit effects, neighbours, map) -> {out}")
    try:
        require_umap()
        draw_map = True
    except ImportError:
        print("      no feature map: it needs umap-learn (pip install 'monoscope[map]')")
        draw_map = False
    run_analyze(
        AnalyzeConfig(
            sae=str(sae_dir), acts=str(store.path), out=str(out), map=draw_map, overwrite=overwrite
        ),
        store=store,
        lm=lm,
    )
    print(f"      browse the features: monoscope serve {out}")
