"""The model's next-token loss with an SAE spliced in at its site, against clean and ablated runs.

Conventions, the same for every variant so that their differences are the site's doing:
- Contexts are the store's held-out contexts, rebuilt from its corpus spec: BOS + context − 1
  tokens, never part of the SAE's training split.
- BOS (position 0) keeps its clean activation in every variant. Stores leave BOS rows out by
  default (their norms are outliers), so the SAE never saw one; replacing it would measure the
  SAE off its training distribution and move every later position through attention.
- Cross-entropy and KL are means over the predictions made at positions 1 .. T−2 (of tokens
  2 .. T−1): the positions whose activation was replaced. The prediction made at BOS is the same
  in every variant (position 0 of a causal model sees only itself), so it would only dilute them.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from monoscope.data import CorpusSpec, iter_contexts
from monoscope.evaluate.metrics import loss_recovered
from monoscope.harvest import StoreError, heldout_mask
from monoscope.models import LanguageModel
from monoscope.models.hooks import SiteEdit

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from monoscope.sae import SparseAutoencoder

Rows = Callable[[Tensor], Tensor]
"""A replacement for activation rows: [n, d] -> [n, d]."""


def run_sae(sae: SparseAutoencoder, x: Tensor) -> tuple[Tensor, Tensor]:
    """(f [n, n_features], x_hat [n, d_in]) for x [n, d_in], on the SAE's device and dtype;
    x_hat is the whole reconstruction, with the terms decode leaves to finish_reconstruction
    (a skip connection, a per-token normalisation undone)."""
    device, dtype = torch.device("cpu"), torch.float32
    for t in itertools.chain(sae.parameters(), sae.buffers()):
        if t.is_floating_point():
            device, dtype = t.device, t.dtype
            break
    x = x.to(device=device, dtype=dtype)
    f = sae.encode(x)
    return f, sae.finish_reconstruction(sae.decode(f), x)


def heldout_contexts(
    manifest: dict[str, Any], tokenizer: PreTrainedTokenizerBase, n_contexts: int
) -> Tensor:
    """The first n_contexts held-out contexts of a store [n, context] int64 (fewer if the corpus
    runs out), rebuilt from the corpus spec in its manifest."""
    fraction = float(manifest["heldout_fraction"])
    if fraction <= 0:
        raise StoreError("the store has no held-out split (heldout_fraction 0) to evaluate on")
    spec = CorpusSpec.from_json(manifest["corpus"])
    chosen: list[list[int]] = []
    for index, context in enumerate(iter_contexts(spec, tokenizer, int(manifest["context"]))):
        if heldout_mask(torch.tensor(index), fraction):
            chosen.append(context.tokens)
            if len(chosen) == n_contexts:
                break
    if not chosen:
        raise StoreError(f"the corpus {spec.source!r} has no held-out context")
    return torch.tensor(chosen)


def _after_bos(replace: Rows) -> SiteEdit:
    """A site edit applying `replace` to every position but BOS."""

    def edit(x: Tensor) -> Tensor:  # x [batch, pos, d]
        b, t, d = x.shape
        out = x.clone()
        out[:, 1:] = replace(x[:, 1:].reshape(b * (t - 1), d)).reshape(b, t - 1, d).to(x)
        return out

    return edit


def _variants(sae: SparseAutoencoder, mean: Tensor) -> dict[str, SiteEdit]:
    def with_error(rows: Tensor) -> Tensor:
        x_hat = run_sae(sae, rows)[1]
        return x_hat + (rows.to(x_hat) - x_hat)  # x̂ + error = x: checks the hooks, not the SAE

    return {
        "sae": _after_bos(lambda rows: run_sae(sae, rows)[1]),
        "sae_with_error": _after_bos(with_error),
        "zero_ablation": _after_bos(torch.zeros_like),
        "mean_ablation": _after_bos(lambda rows: mean.to(rows).expand_as(rows)),
    }


def _log_probs(logits: Tensor) -> Tensor:
    """Log-probabilities [b, T − 2, vocab] of the predictions made at positions 1 .. T−2."""
    return logits[:, 1:-1].float().log_softmax(dim=-1)


def splice_metrics(
    lm: LanguageModel,
    sae: SparseAutoencoder,
    site: str,
    contexts: Tensor,
    mean: Tensor,
    batch_contexts: int = 8,
) -> dict:
    """Cross-entropy of the clean model, of the SAE spliced in (with and without its error term)
    and of the site zero- and mean-ablated; KL(clean ‖ variant) per token; loss recovered.

    contexts [n, T] token ids starting with BOS; mean [d] the mean-ablation activation.
    """
    if contexts.shape[1] < 3:
        raise ValueError("the splice metrics need contexts of at least 3 tokens")
    variants = _variants(sae, mean)
    ce = dict.fromkeys(["clean", *variants], 0.0)
    kl = dict.fromkeys(variants, 0.0)
    with torch.no_grad():
        for start in range(0, contexts.shape[0], batch_contexts):
            ids = contexts[start : start + batch_contexts].to(lm.device)  # [b, T]
            targets = ids[:, 2:, None]  # [b, T − 2, 1]: predicted from positions 1 .. T−2
            clean = _log_probs(lm.logits(ids))
            p_clean = clean.exp()
            ce["clean"] -= clean.gather(-1, targets).sum().item()
            for name, edit in variants.items():
                with lm.patch({site: edit}):
                    spliced = _log_probs(lm.logits(ids))
                ce[name] -= spliced.gather(-1, targets).sum().item()
                kl[name] += (p_clean * (clean - spliced)).sum().item()
    n = contexts.shape[0] * (contexts.shape[1] - 2)
    ce = {name: total / n for name, total in ce.items()}
    return {
        "contexts": contexts.shape[0],
        "predictions": n,
        "ce": ce,
        "ce_increase": ce["sae"] - ce["clean"],
        "kl": {name: total / n for name, total in kl.items()},
        "loss_recovered": {
            ablation: loss_recovered(ce[ablation], ce["sae"], ce["clean"])
            for ablation in ("zero_ablation", "mean_ablation")
        },
    }
