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

from pathlib import Path

import torch
from torch import Tensor

from monoscope.analyze import AnalyzeConfig
from monoscope.analyze import run as run_analyze
from monoscope.harvest import HarvestConfig
from monoscope.harvest import run as run_harvest
from monoscope.interpret.config import NeuronsConfig
from monoscope.models import LanguageModel, load_model
from monoscope.sae.identity import NeuronDictionary, neuron_config

ACTS, SAE, FEATURES = "acts", "sae", "features.db"
"""What `run_neurons` writes under its --out folder."""


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
