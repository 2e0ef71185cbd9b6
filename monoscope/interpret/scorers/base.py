"""What every scorer returns, the interface it implements, and how it picks held-out examples."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from monoscope.interpret.examples import Example, FeatureExamples, Split

STATUSES = ("ok", "unparsable", "undefined")
"""ok: a score; unparsable: no usable answer at all; undefined: answers, but the headline is
not defined on them (e.g. no non-activating example, so no balanced accuracy)."""


@dataclass
class ScoreResult:
    scorer: str
    version: str
    """The scorer's version (e.g. 'detection-v2'): a new version whenever what it asks or how it
    scores changes, so rows of an older version are scored again."""
    status: str
    score: float | None
    """The headline (detection, fuzzing: balanced accuracy; simulation: Pearson r; embedding:
    AUROC); None unless status is 'ok'."""
    chance: float
    """What a judge without information scores on average."""
    metrics: dict[str, Any] = field(default_factory=dict)
    details: list[dict[str, Any]] = field(default_factory=list)
    """One record per held-out example: {kind, bucket, rank, truth, answer, ...}."""
    cache_keys: list[str] = field(default_factory=list)


class Scorer(Protocol):
    name: str
    version: str
    chance: float

    def score(
        self,
        fx: FeatureExamples,
        split: Split,
        explanation: str,
        judge: Any,
        rng_seed: int = 0,
        hard_negatives: Sequence[Example] = (),
    ) -> ScoreResult:
        """Score `explanation` on the held-out examples of `split` (split.activating,
        split.non_activating; never split.explain). `judge` is a `Caller` for the LLM scorers
        and an embedder for `embedding`. `hard_negatives`: windows where the feature is taken
        not to fire (e.g. its decoder neighbours' top windows), used by the scorers that only
        need a window's label (detection, embedding)."""
        ...


def group(example: Example) -> str:
    """An example's group in per-quantile reports: 'top', 'q<bucket>', or its kind."""
    if example.kind == "quantile":
        return f"q{example.bucket}"
    return example.kind


def identity(example: Example) -> dict[str, Any]:
    """The example's key fields, as every details record starts."""
    return {"kind": example.kind, "bucket": example.bucket, "rank": example.rank}


def pick(examples: Sequence[Example], limit: int | None, rng: random.Random) -> list[Example]:
    """At most `limit` examples (None: all), taken in turn from each group (top, each quantile,
    ...) so that a subsample still spans the activation range."""
    if limit is None or len(examples) <= limit:
        return list(examples)
    groups: dict[str, list[Example]] = {}
    for e in examples:
        groups.setdefault(group(e), []).append(e)
    for members in groups.values():
        rng.shuffle(members)
    chosen: list[Example] = []
    while len(chosen) < limit:
        for members in groups.values():
            if members and len(chosen) < limit:
                chosen.append(members.pop())
    return chosen


def feature_rng(fx: FeatureExamples, rng_seed: int) -> random.Random:
    """The scorer's random draws for one feature: fixed by (seed, feature), so a rerun sends the
    same requests and the call cache answers them."""
    return random.Random(rng_seed * 1_000_003 + fx.feature)
