"""Hard negatives for the detection scorer: top windows of a feature's decoder neighbours on
which the feature itself is silent, checked by encoding those windows again with the SAE.

A neighbour fires in contexts close to the feature's own, so a judge that only matches the
topic, not the explanation's specifics, mistakes these for activating windows (Delphi's
"neighbours" negatives). The check reads the windows' activations from the activation store
the feature store was analysed from; no model forward is needed.
"""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor

from monoscope.analyze.recorded import locate
from monoscope.analyze.runner import encode
from monoscope.analyze.windows import read_rows
from monoscope.harvest import ActivationStore
from monoscope.interpret.examples import Example, FeatureExamples, load_features
from monoscope.sae import load_sae

ENCODE_ROWS = 2048
"""Rows encoded at a time (their dense codes: 2048 x n_features floats)."""


class WindowEncoder:
    """A feature's activations on any window of the activation store (the store and SAE named
    in the feature store's meta)."""

    def __init__(self, meta: dict, db: str | Path) -> None:
        sae_path, acts_path = meta["sae"].get("path"), meta["acts"].get("path")
        try:
            self.sae = load_sae(locate(sae_path, db, "SAE"))
            self.store = ActivationStore(locate(acts_path, db, "activation store"))
        except (OSError, ValueError) as err:
            raise ValueError(
                f"hard negatives re-encode windows with the SAE and the activation store this "
                f"feature store was analysed from, and they could not be opened ({err}); pass "
                "--hard-negatives 0 to score without them"
            ) from err
        self.site = meta["acts"]["site"]
        self.context = int(self.store.manifest["context"])

    def feature_acts(self, pairs: list[tuple[int, Example]]) -> list[Tensor]:
        """For each (feature, example), the feature's activation on every token of the
        example's window, [len(tokens)]. One pass over the store's shards for all of them
        (a shard is read and checked once), each distinct token encoded once."""
        locs = [
            e.context * self.context + e.position - e.centre + torch.arange(len(e.token_ids))
            for _, e in pairs
        ]
        if not locs:
            return []
        unique, slot = torch.unique(torch.cat(locs), return_inverse=True)
        rows = read_rows(self.store, self.site, unique, self.context)  # [u, d_in]
        wanted = torch.cat(
            [torch.full((len(loc),), f) for (f, _), loc in zip(pairs, locs, strict=True)]
        )
        values = torch.zeros(slot.numel())  # [total tokens]
        # Encoded a block of rows at a time: the dense codes of every row would be u x F.
        for start in range(0, len(unique), ENCODE_ROWS):
            inside = (slot >= start) & (slot < start + ENCODE_ROWS)
            codes = encode(self.sae, rows[start : start + ENCODE_ROWS])
            values[inside] = codes[slot[inside] - start, wanted[inside]]
        return list(values.split([len(loc) for loc in locs]))


def hard_negatives(
    conn: sqlite3.Connection,
    features: dict[int, FeatureExamples],
    vocab: list[str],
    per_feature: int,
    windows: WindowEncoder,
) -> dict[int, list[Example]]:
    """Up to `per_feature` neighbour windows per feature on which it never fires, as Examples
    of kind 'neighbour' (bucket: the neighbour feature, rank: its top example's rank), taken
    from the nearest neighbours first."""
    wanted = sorted({n for fx in features.values() for n in fx.neighbours} - set(features))
    pool = {**features, **load_features(conn, wanted, vocab)} if wanted else dict(features)
    candidates: dict[int, list[Example]] = {}
    for fid, fx in features.items():
        own = {(e.context, e.position) for e in fx.top + fx.quantile}
        candidates[fid] = [
            replace(e, kind="neighbour", bucket=n, activation=0.0)
            for n in fx.neighbours
            if n in pool
            for e in pool[n].top
            if (e.context, e.position) not in own
        ][: 3 * per_feature]
    pairs = [(fid, e) for fid, found in candidates.items() for e in found]
    silent = iter(float(acts.max()) <= 0 for acts in windows.feature_acts(pairs))
    out: dict[int, list[Example]] = {}
    for fid, found in candidates.items():
        kept = [replace(e, acts=[0.0] * len(e.acts)) for e in found if next(silent)]
        out[fid] = kept[:per_feature]
    return out
