"""Features vs neurons, the correlation half (Templeton et al. 2024, METHODS.md §5.3): the Pearson
correlation of sampled SAE features with every MLP neuron of every layer up to the SAE's site,
from one streaming pass of sums over the tokens of the SAE's activation store.

The store's token ids are run through the model again (its contexts rebuilt: BOS, then the
stored positions), capturing every blocks.l.mlp.hook_post site and the SAE's site in one forward
pass per batch; the SAE encodes its site, and only Σx, Σx², Σy, Σy², Σxy (float64) are kept:
no activation outlives its batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm import tqdm

from monoscope.harvest import ActivationStore, StoreError
from monoscope.interpret.config import neuron_site
from monoscope.models import LanguageModel
from monoscope.models.sites import SITE_PATTERN
from monoscope.sae import SparseAutoencoder

BEFORE_THE_MLP = ("hook_resid_pre", "hook_attn_out")
"""Sites of layer L that the MLP of layer L does not feed (its neurons come after them)."""


def upstream_layers(site: str) -> list[int]:
    """The layers whose MLP neurons precede `site` ("all preceding layers"): 0..L, or 0..L-1
    for a site before layer L's MLP."""
    match = SITE_PATTERN.match(site)
    if match is None:
        raise ValueError(f"cannot tell the layer of site {site!r} (expected blocks.L.<hook>)")
    layer = int(match.group(1))
    return list(range(layer if match.group(2) in BEFORE_THE_MLP else layer + 1))


class StreamingCorrelation:
    """Pearson r between every column of x [rows, p] and every column of y [rows, q], from
    float64 sums updated one batch of rows at a time (on the tensors' device)."""

    def __init__(self, p: int, q: int, device: torch.device | str = "cpu") -> None:
        f64 = torch.float64
        self.n = 0
        self.sx = torch.zeros(p, dtype=f64, device=device)
        self.sxx = torch.zeros(p, dtype=f64, device=device)
        self.sy = torch.zeros(q, dtype=f64, device=device)
        self.syy = torch.zeros(q, dtype=f64, device=device)
        self.sxy = torch.zeros(p, q, dtype=f64, device=device)

    def update(self, x: Tensor, y: Tensor) -> None:
        """Add rows: x [rows, p], y [rows, q] (the same rows)."""
        x, y = x.double(), y.double()
        self.n += x.shape[0]
        self.sx += x.sum(0)
        self.sxx += x.square().sum(0)
        self.sy += y.sum(0)
        self.syy += y.square().sum(0)
        self.sxy.addmm_(x.T, y)

    def pearson(self) -> Tensor:
        """r [p, q]; 0 where a column is constant (no correlation is defined there)."""
        n = max(self.n, 1)
        cov = self.sxy - torch.outer(self.sx, self.sy) / n
        var_x = (self.sxx - self.sx.square() / n).clamp_min(0)
        var_y = (self.syy - self.sy.square() / n).clamp_min(0)
        scale = torch.outer(var_x, var_y).sqrt()
        r = torch.where(scale > 0, cov / scale.clamp_min(1e-300), 0.0)
        return r.clamp_(-1.0, 1.0)


@dataclass
class BestMatch:
    """Per feature q: the neuron with the largest |r|. Each [q]."""

    layer: Tensor
    neuron: Tensor
    r: Tensor
    """Signed Pearson r of the best match."""
    per_layer: Tensor
    """[layers, q]: each layer's best |r| (layers in the order given)."""


def best_matches(correlations: dict[int, StreamingCorrelation]) -> BestMatch:
    """The best-matching neuron of each feature over every layer's correlations (ties: the
    earlier layer, then the lower neuron index)."""
    if not correlations:
        raise ValueError("no layers to correlate with")
    neurons, values = [], []
    for acc in correlations.values():
        r = acc.pearson().cpu()  # [p, q]
        index = r.abs().argmax(0)  # [q], the first maximum
        neurons.append(index)
        values.append(r.gather(0, index[None])[0])
    r, neuron = torch.stack(values), torch.stack(neurons)  # [layers, q]
    which = r.abs().argmax(0)  # [q]
    layers = torch.tensor(list(correlations))
    pick = which[None]
    return BestMatch(layers[which], neuron.gather(0, pick)[0], r.gather(0, pick)[0], r.abs())


def context_batches(
    store: ActivationStore, batch_tokens: int, max_tokens: int = 0
) -> Iterator[tuple[Tensor, Tensor]]:
    """(ids [B, T], stored [B, T] bool): the store's contexts rebuilt, batch_tokens tokens (whole
    contexts, at least one) at a time, and which positions the store holds, in store order, up
    to max_tokens stored rows (0: all). Positions it does not hold are BOS (position 0 unless
    the store kept BOS) or trailing padding of a context cut short, which no stored position
    reads (the model is causal)."""
    context, bos = int(store.manifest["context"]), store.manifest["bos_token_id"]
    per_batch = max(1, batch_tokens // context)
    limit, seen = max_tokens or store.n_tokens, 0
    for index in range(len(store.shards)):
        shard = store.load_shard(index)
        n = min(shard["token_ids"].shape[0], limit - seen)
        seen += n
        contexts = shard["context_index"][:n].long()
        positions = shard["position"][:n].long()
        # harvest writes whole contexts into a shard, in order: rows of one context are adjacent
        firsts, row_of = torch.unique_consecutive(contexts, return_inverse=True)
        for start in range(0, firsts.numel(), per_batch):
            rows = (row_of >= start) & (row_of < start + per_batch)
            b = min(per_batch, firsts.numel() - start)
            ids = torch.full((b, context), bos, dtype=torch.long)
            stored = torch.zeros(b, context, dtype=torch.bool)
            ids[row_of[rows] - start, positions[rows]] = shard["token_ids"][:n][rows].long()
            stored[row_of[rows] - start, positions[rows]] = True
            yield ids, stored
        if seen >= limit:
            return


def correlate(
    lm: LanguageModel,
    sae: SparseAutoencoder,
    store: ActivationStore,
    features: Tensor,
    layers: list[int],
    batch_tokens: int = 4096,
    max_tokens: int = 0,
    progress: bool = False,
) -> dict[int, StreamingCorrelation]:
    """{layer: the correlations of its neurons with `features` [q] of the SAE}, over the store's
    tokens (up to max_tokens), the SAE reading its own site from the same forward passes."""
    site = sae.cfg.site
    if site is None:
        raise ValueError("the SAE names no site: its features cannot be read from the model")
    sites = [neuron_site(layer) for layer in layers]
    widths = {layer: lm.site(s).width for layer, s in zip(layers, sites, strict=True)}
    param = next(sae.parameters())
    features = features.to(param.device)
    acc = {
        layer: StreamingCorrelation(widths[layer], features.numel(), param.device)
        for layer in layers
    }
    total = min(max_tokens or store.n_tokens, store.n_tokens)
    bar = tqdm(total=total, unit="tok", unit_scale=True, disable=not progress, desc="correlate")
    try:
        for ids, stored in context_batches(store, batch_tokens, max_tokens):
            acts = lm.capture(ids, [*sites, site])  # {site: [B, T, d]}
            keep = stored.to(acts[site].device)
            with torch.no_grad():
                x = acts[site][keep].to(device=param.device, dtype=param.dtype)
                y = sae.encode(x)[:, features]  # [rows, q]
                for layer, s in zip(layers, sites, strict=True):
                    acc[layer].update(acts[s][keep].to(param.device), y)
            bar.update(int(keep.sum()))
    finally:
        bar.close()
    if not next(iter(acc.values())).n:
        raise StoreError(f"store {store.path} has no tokens to correlate over")
    return acc
