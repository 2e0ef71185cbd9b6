"""Detection (Delphi): does the feature fire anywhere in this window? Held-out activating
windows from every activation interval and non-activating ones (random contexts, plus any hard
negatives) are shuffled and shown a batch at a time without marks; the judge answers 0/1 each.
Headline: balanced accuracy (chance 0.5), with accuracy per activation quantile."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from monoscope.interpret.backends.base import Caller
from monoscope.interpret.examples import Example, FeatureExamples, Split
from monoscope.interpret.formatting import plain_text
from monoscope.interpret.scorers.base import ScoreResult, feature_rng, pick
from monoscope.interpret.scorers.binary import Item, ask_in_batches, binary_result


@dataclass
class DetectionScorer:
    batch_size: int = 5
    """Windows per call (Delphi asks about a handful at once)."""
    max_activating: int | None = None
    """Held-out activating windows used at most (None: all), spread over the intervals."""
    max_non_activating: int | None = None
    version: str = "detection-v1"
    name: str = "detection"
    chance: float = 0.5

    def score(
        self,
        fx: FeatureExamples,
        split: Split,
        explanation: str,
        judge: Caller,
        rng_seed: int = 0,
        hard_negatives: Sequence[Example] = (),
    ) -> ScoreResult:
        rng = feature_rng(fx, rng_seed)
        positives = pick(split.activating, self.max_activating, rng)
        negatives = pick([*split.non_activating, *hard_negatives], self.max_non_activating, rng)
        items = [Item(e, plain_text(e.tokens), True) for e in positives]
        items += [Item(e, plain_text(e.tokens), False) for e in negatives]
        asked = ask_in_batches(judge, self.version, explanation, items, self.batch_size, rng)
        return binary_result(self.name, self.version, *asked)
