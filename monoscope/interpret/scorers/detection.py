"""Detection (Delphi): does the feature fire anywhere in this window? Held-out activating
windows from every activation interval and non-activating ones (random contexts, plus any hard
negatives) are shown without marks; the judge answers 0/1 each, a shuffled batch at a time
(text mode) or one window a call read from the answer token's logprobs (logprobs mode, which also
gives each window a probability and so a real AUROC; see binary.py). Headline: balanced accuracy
(chance 0.5), with accuracy per activation quantile."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from monoscope.interpret.examples import Example, FeatureExamples, Split
from monoscope.interpret.formatting import plain_text
from monoscope.interpret.scorers.base import pick
from monoscope.interpret.scorers.binary import BinaryScorer, Item


@dataclass
class DetectionScorer(BinaryScorer):
    max_non_activating: int | None = None
    """Non-activating windows used at most (None: all): non-firing ones and hard negatives."""
    version: str = "detection-v2"  # v2: the answer modes; v1 asked in batches only
    text_prompt: str = "detection-v1"
    logprobs_prompt: str = "detection-one-v1"
    name: str = "detection"

    def items(
        self,
        fx: FeatureExamples,
        split: Split,
        rng: random.Random,
        hard_negatives: Sequence[Example],
    ) -> list[Item]:
        positives = pick(split.activating, self.max_activating, rng)
        negatives = pick([*split.non_activating, *hard_negatives], self.max_non_activating, rng)
        items = [Item(e, plain_text(e.tokens), True) for e in positives]
        return items + [Item(e, plain_text(e.tokens), False) for e in negatives]
