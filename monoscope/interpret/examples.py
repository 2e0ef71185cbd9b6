"""A feature's examples read from the feature store, and the split between what the explainer
sees and what the scorers hold out.

The split is fixed by the examples' ranks, so every explainer and scorer run on a store agrees
on it without recording random draws: the explainer never sees a window a scorer grades.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Example:
    """One window of the feature store's `examples` table, its token ids decoded.

    tokens, token_ids, acts: [window]; acts is the feature's activation on each token.
    """

    kind: str
    """'top', 'quantile' (sampled in activation interval `bucket`) or 'random' (a context where
    the feature does not fire at the centre)."""
    bucket: int | None
    rank: int
    activation: float
    """The activation at the centre token."""
    context: int
    position: int
    token_ids: list[int]
    tokens: list[str]
    acts: list[float]
    centre: int

    @property
    def key(self) -> tuple[str, int | None, int]:
        """(kind, bucket, rank): the example's identity in the store."""
        return (self.kind, self.bucket, self.rank)

    @property
    def max_act(self) -> float:
        return max(self.acts, default=0.0)

    @property
    def text(self) -> str:
        return "".join(self.tokens)


@dataclass
class FeatureExamples:
    """Everything the interpret stage reads of one feature."""

    feature: int
    max_act: float
    density: float
    top: list[Example] = field(default_factory=list)
    quantile: list[Example] = field(default_factory=list)
    random: list[Example] = field(default_factory=list)
    logit_top: list[str] = field(default_factory=list)
    """Token texts with the largest direct logit effect, largest first."""
    logit_bottom: list[str] = field(default_factory=list)
    neighbours: list[int] = field(default_factory=list)
    """Features nearest by decoder cosine, closest first."""

    @property
    def has_examples(self) -> bool:
        return bool(self.top)


@dataclass
class Split:
    """explain: shown to the explainer; activating and non_activating: held out for scoring."""

    explain: list[Example]
    activating: list[Example]
    non_activating: list[Example]


def split_examples(fx: FeatureExamples) -> Split:
    """Top examples alternate by rank (even ranks explain, odd ranks are held out, so both sides
    reach the maximum); of each activation interval's samples the first explains and the rest are
    held out (scorers then cover every interval, as Delphi's quantile sampling does); the
    non-firing windows are all held out."""
    explain = [e for e in fx.top if e.rank % 2 == 0]
    activating = [e for e in fx.top if e.rank % 2 == 1]
    explain += [e for e in fx.quantile if e.rank == 0]
    activating += [e for e in fx.quantile if e.rank > 0]
    return Split(explain=explain, activating=activating, non_activating=list(fx.random))


def read_vocab(conn: sqlite3.Connection) -> list[str]:
    """The decoded text of every token id (index = id)."""
    return [text for (text,) in conn.execute("SELECT text FROM vocab ORDER BY id")]


def load_features(
    conn: sqlite3.Connection, ids: list[int], vocab: list[str]
) -> dict[int, FeatureExamples]:
    """FeatureExamples of each id that exists in the store (unknown ids are left out)."""
    out: dict[int, FeatureExamples] = {}
    marks = ",".join("?" * len(ids))
    for fid, max_act, density, top, bottom in conn.execute(
        f"SELECT id, max_act, density, logit_top, logit_bottom FROM features WHERE id IN ({marks})",
        ids,
    ):
        out[fid] = FeatureExamples(
            feature=fid,
            max_act=max_act,
            density=density,
            logit_top=[text for _, text, _ in json.loads(top or "[]")],
            logit_bottom=[text for _, text, _ in json.loads(bottom or "[]")],
        )
    for row in conn.execute(
        "SELECT feature, kind, bucket, rank, activation, context, position, tokens, acts, centre "
        f"FROM examples WHERE feature IN ({marks}) ORDER BY feature, kind, bucket, rank",
        ids,
    ):
        fid, kind, bucket, rank, activation, context, position, tokens, acts, centre = row
        token_ids = json.loads(tokens)
        example = Example(
            kind=kind,
            bucket=bucket,
            rank=rank,
            activation=activation,
            context=context,
            position=position,
            token_ids=token_ids,
            tokens=[vocab[t] if 0 <= t < len(vocab) else f"<{t}>" for t in token_ids],
            acts=json.loads(acts),
            centre=centre,
        )
        getattr(out[fid], kind).append(example)
    for fid, neighbour in conn.execute(
        f"SELECT feature, neighbour FROM neighbours WHERE feature IN ({marks}) "
        "ORDER BY feature, rank",
        ids,
    ):
        out[fid].neighbours.append(neighbour)
    return out
