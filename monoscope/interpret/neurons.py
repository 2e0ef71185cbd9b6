"""`monoscope neurons`: a layer's MLP neurons harvested and analysed as a dictionary of features.

The neurons of site blocks.L.mlp.hook_post (SmolLM2: the 1,536 gate×up hidden units) become an
identity "SAE" (monoscope.sae.identity, arch 'neurons') saved in the SAE folder format, and the
existing stages run on it unchanged: harvest -> out/acts, the dictionary -> out/sae, analyze ->
out/features.db. explain, score and specificity then read that store like any other, which is
what the features-vs-neurons comparison needs (Templeton et al. 2024, METHODS.md §5.3).

Analyze runs with two of its options changed and its logit directions given, because a
neuron's decoder row is a one-hot vector of the MLP's hidden space, not a direction of the
residual stream:
- no decoder-cosine neighbours (every pair is orthogonal: the list would be arbitrary; and
  counting co-occurrence over a code that fires on half the units is the pass's dearest part);
- no UMAP map (orthogonal one-hot directions lay out as noise);
- the direct logit effects not from W_dec but from each neuron's output direction (its
  column of the MLP's output projection; minus that for the negative side), given to analyze,
  so the explainer sees a neuron's output tokens as it sees a feature's (Templeton et al.
  compare features and neurons with the same pipeline).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from monoscope.analyze import AnalyzeConfig
from monoscope.analyze import run as run_analyze
from monoscope.harvest import HarvestConfig
from monoscope.harvest import run as run_harvest
from monoscope.models import LanguageModel, load_model
from monoscope.sae.identity import SIGNS, NeuronDictionary, neuron_config

ACTS, SAE, FEATURES = "acts", "sae", "features.db"
"""What `run_neurons` writes under its --out folder."""


def neuron_site(layer: int) -> str:
    """The site of a layer's MLP neurons (after the nonlinearity and the gating product)."""
    return f"blocks.{layer}.mlp.hook_post"


@dataclass
class NeuronsConfig:
    model: str = "smollm2-135m"
    """Model: a built-in name (smollm2-135m), a local folder, or a Hugging Face hub id."""
    layer: int = 15
    """Layer whose MLP neurons (site blocks.LAYER.mlp.hook_post) are the dictionary."""
    corpus: str = "builtin"
    """Corpus: 'builtin', a .txt/.jsonl/.parquet file or folder, or hf:DATASET."""
    tokens: int = 200_000
    """Number of tokens to harvest and analyse."""
    out: str = "runs/demo/neurons"
    """Output folder: acts/ (activation store), sae/ (the identity dictionary), features.db."""
    context: int = 128
    """Tokens per packed context, BOS included (the SAE's store's, to compare on the same
    text)."""
    dtype: str = "bfloat16"
    """Storage dtype of the activations: float32, bfloat16 (bf16) or float16 (fp16)."""
    seed: int = 0
    """Seed of the corpus document order and of analyze's random samples."""
    signs: str = "positive"
    """Which side of each signed gate×up unit is a feature: positive (one feature per neuron,
    max(x, 0)), or both (2 × width features: max(x, 0), then max(-x, 0))."""
    batch_size: int = 4096
    """Activation rows per analyze batch."""
    logit_tokens: int = 10
    """Top and bottom tokens kept per neuron by direct logit effect."""
    overwrite: bool = False
    """Replace an existing activation store and feature store under --out."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        if self.layer < 0:
            raise ValueError(f"layer must be >= 0, got {self.layer}")
        if self.signs not in SIGNS:
            raise ValueError(f"signs must be one of {', '.join(SIGNS)}, got {self.signs!r}")
        for name in ("tokens", "batch_size", "logit_tokens"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def site(self) -> str:
        return neuron_site(self.layer)


def run_neurons(cfg: NeuronsConfig, lm: LanguageModel | None = None) -> Path:
    """Harvest, save the identity dictionary, analyse; returns the feature store's path.
    A rerun resumes or reuses what the stages already finished (unless cfg.overwrite)."""
    lm = lm or load_model(cfg.model)
    if cfg.layer >= lm.n_layers:
        raise ValueError(f"layer {cfg.layer} does not exist: {lm.name} has {lm.n_layers} layers")
    out = Path(cfg.out)
    store = run_harvest(
        HarvestConfig(
            model=cfg.model,
            sites=[cfg.site],
            corpus=cfg.corpus,
            tokens=cfg.tokens,
            out=str(out / ACTS),
            dtype=cfg.dtype,
            context=cfg.context,
            seed=cfg.seed,
            overwrite=cfg.overwrite,
            progress=cfg.progress,
        ),
        lm,
    )
    width = lm.site(cfg.site).width
    sae = NeuronDictionary(neuron_config(width, cfg.signs, site=cfg.site, model=lm.name))
    sae.save(out / SAE)
    # A neuron writes to the residual stream through its column of the MLP's output
    # projection, not through its identity decoder row: the logit effects follow that.
    directions = output_directions(lm, cfg.site)
    if cfg.signs == "both":
        directions = torch.cat([directions, -directions])
    analyze_cfg = AnalyzeConfig(
        sae=str(out / SAE),
        acts=str(out / ACTS),
        out=str(out / FEATURES),
        batch_size=cfg.batch_size,
        neighbours=0,
        map=False,
        logit_tokens=cfg.logit_tokens,
        seed=cfg.seed,
        overwrite=cfg.overwrite,
        progress=cfg.progress,
    )
    return run_analyze(analyze_cfg, sae=sae, store=store, lm=lm, logit_directions=directions)


@torch.no_grad()
def output_directions(lm: LanguageModel, site: str) -> Tensor:
    """[width, d_model] float32: what each unit of a neuron site adds to the residual stream per
    unit of activation (its column of the output projection, read off the module itself so that
    Linear and GPT-2's Conv1D layouts agree)."""
    resolved = lm.site(site)
    param = next(resolved.module.parameters())
    eye = torch.eye(resolved.width, device=param.device, dtype=param.dtype)
    return (resolved.module(eye) - resolved.module(torch.zeros_like(eye[:1]))).float().cpu()
