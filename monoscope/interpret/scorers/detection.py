"""Detection (Delphi): does the feature fire anywhere in this window? Held-out activating
windows from every activation interval and non-activating ones (random contexts, plus any hard
negatives) are shown without marks; the judge answers 0/1 each, a shuffled batch at a time
(text mode) or one window a call read from the answer token's logprobs (logprobs mode, which also
gives each window a probability and so a real AUROC; see binary.py). Headline: balanced accuracy
(chance 0.5), with accuracy per activation quantile."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from monoscope.interpret.backends.base import Caller
from monoscope.interpret.examples import Example, FeatureExamples, Split
from monoscope.interpret.formatting import plain_text
from monoscope.interpret.scorers.base import ScoreResult, feature_rng, pick
from monoscope.interpret.scorers.binary import Item, answer_mode, ask, binary_result, check_answers


@dataclass
class DetectionScorer:
    batch_size: int = 5
    """Windows per call in text mode (Delphi asks about a handful at once)."""
    max_activating: int | None = None
    """Held-out activating windows used at most (None: all), spread over the intervals."""
    max_non_activating: int | None = None
    answers: str = "auto"
    """text, logprobs, or auto: logprobs when the judge's backend returns them."""
    version: str = "detection-v2"
    """The scorer's version, stored with every score (v2: the answer modes; v1 asked in batches
    only). A new prompt below means a new version."""
    text_prompt: str = "detection-v1"
    logprobs_prompt: str = "detection-one-v1"
    name: str = "detection"
    chance: float = 0.5

    def __post_init__(self) -> None:
        check_answers(self.answers)

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
        mode = answer_mode(self.answers, judge)
        prompts = (self.text_prompt, self.logprobs_prompt)
        asked = ask(judge, mode, prompts, explanation, items, self.batch_size, rng)
        return binary_result(self.name, self.version, asked)
