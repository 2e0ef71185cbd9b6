"""Fuzzing (Delphi): are the marked tokens the ones the feature fires on? Each held-out
activating window is shown once, marked either correctly (its activating tokens) or, for a
random half, at as many random non-activating tokens as an activating window has on average
(n_incorrect = ceil(mean active tokens), Delphi's rule). The judge answers 0/1 per window, in
batches (text mode) or one window a call read from the answer token's logprobs (logprobs mode;
see binary.py). Headline: balanced accuracy (chance 0.5)."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from monoscope.interpret.examples import Example, FeatureExamples, Split
from monoscope.interpret.formatting import active, marked_text
from monoscope.interpret.scorers.base import pick
from monoscope.interpret.scorers.binary import BinaryScorer, Item


@dataclass
class FuzzingScorer(BinaryScorer):
    version: str = "fuzzing-v2"  # v2: the answer modes; v1 asked in batches only
    text_prompt: str = "fuzzing-v1"
    logprobs_prompt: str = "fuzzing-one-v1"
    name: str = "fuzzing"

    def items(
        self,
        fx: FeatureExamples,
        split: Split,
        rng: random.Random,
        hard_negatives: Sequence[Example],
    ) -> list[Item]:
        """hard_negatives are not used: a wrong marking needs this feature's activations on
        every token of the window, which only the held-out activating windows carry."""
        return fuzz(pick(split.activating, self.max_activating, rng), fx.max_act, rng)


def fuzz(windows: list[Example], max_act: float, rng: random.Random) -> list[Item]:
    """Items for the windows: a random half (rounded down) marked at random non-activating
    tokens, the rest marked correctly. A window with no non-activating token to mark stays
    correct. Each item's extra records the marked positions."""
    correct_marks = [active(e, max_act) for e in windows]
    n_wrong = math.ceil(sum(map(sum, correct_marks)) / len(windows)) if windows else 0
    fuzzed = set(rng.sample(range(len(windows)), len(windows) // 2))
    items = []
    for i, (e, marks) in enumerate(zip(windows, correct_marks, strict=True)):
        quiet = [j for j, m in enumerate(marks) if not m]
        if i in fuzzed and quiet and n_wrong:
            chosen = set(rng.sample(quiet, min(n_wrong, len(quiet))))
            marks = [j in chosen for j in range(len(marks))]
            truth = False
        else:
            truth = True
        positions = [j for j, m in enumerate(marks) if m]
        items.append(Item(e, marked_text(e.tokens, marks), truth, {"marked": positions}))
    return items
