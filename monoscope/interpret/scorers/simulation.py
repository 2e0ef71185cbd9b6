"""Simulation (Bills et al. 2023): from the explanation alone, the judge predicts the feature's
activation 0-10 on every token of held-out windows (activating and non-activating, one window a
call); the score is the Pearson r between predictions and true activations pooled over all
tokens of all windows (not a mean of per-window r). Chance 0.

Two modes, chosen by the judge's capabilities:
- logprobs (prompt simulation-v1): the judge copies the tokens one a line as `token<TAB>digit`; each
  prediction is the expected value over the 0-10 alternatives among the top logprobs at the
  position where the digit starts (Bills' expected value), renormalised over those alternatives.
  '10': a tokenizer with a '10' token offers it as an alternative of value 10. A tokenizer that
  splits digits writes '1' then '0': the mass of '1' is split between 1 and 10 by the next
  position's probability of a '0', known when the judge chose '1' there (the next position's
  alternatives are conditioned on the chosen token); when it chose another digit, '1' counts 1.
  A position whose alternatives cannot be aligned with the text gives its plain digit instead
  (counted in n_point_estimates).
- json (prompt simulation-json-v1): {"activations": [ints]}; the plain values.
The mode follows from the judge, so the result's version is the scorer's ('simulation-v1') in
both; metrics name the mode and the prompt file used.
A window whose answer does not hold exactly one value per token is unparsable (counted, kept).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from monoscope.interpret.backends.base import Caller, ChatRequest, ChatResponse
from monoscope.interpret.examples import Example, FeatureExamples, Split
from monoscope.interpret.formatting import MAX_LEVEL, escape, plain_text
from monoscope.interpret.metrics import pearson
from monoscope.interpret.prompts import load_prompt
from monoscope.interpret.scorers.base import ScoreResult, feature_rng, identity, pick

MODES = ("auto", "logprobs", "json")
RAW_KEPT = 500

_LINE_VALUE = re.compile(r"(?:^|[\t ])(\d+)[ \t]*$")
_LIST = re.compile(r"\[[^\[\]]*\]")


@dataclass
class SimulationScorer:
    mode: str = "auto"
    """logprobs, json, or auto: logprobs when the judge's backend returns them."""
    top_logprobs: int = 15
    max_activating: int | None = None
    """Held-out activating windows used at most (None: all), spread over the intervals."""
    max_non_activating: int | None = None
    version: str = "simulation-v1"
    """The logprobs mode's prompt file; json mode's is simulation-json-v<same>."""
    name: str = "simulation"
    chance: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")

    def score(
        self,
        fx: FeatureExamples,
        split: Split,
        explanation: str,
        judge: Caller,
        rng_seed: int = 0,
        hard_negatives: Sequence[Example] = (),
    ) -> ScoreResult:
        """hard_negatives are not used: simulation needs this feature's true activation on every
        token, which only the held-out windows carry."""
        rng = feature_rng(fx, rng_seed)
        windows = pick(split.activating, self.max_activating, rng)
        windows += pick(split.non_activating, self.max_non_activating, rng)
        logprobs = self.mode == "logprobs" or (
            self.mode == "auto" and judge.backend.capabilities.logprobs
        )
        prompt = self.version if logprobs else self.version.replace("-v", "-json-v", 1)
        keys, predictions, unparsable, n_point = [], [], [], 0
        for i, e in enumerate(windows):
            result = judge.call(self._request(judge, e, explanation, prompt, logprobs))
            keys.append(result.key)
            if logprobs:
                pred, points = parse_logprob_answer(result.response, len(e.tokens))
                n_point += points
            else:
                pred = parse_json_answer(result.response.text, len(e.tokens))
            if pred is None:
                unparsable.append({"window": i, "raw": result.response.text[:RAW_KEPT]})
            predictions.append(pred)
        score = _result(self.name, self.version, windows, predictions, keys, unparsable, n_point)
        score.metrics |= {"mode": "logprobs" if logprobs else "json", "prompt_version": prompt}
        return score

    def _request(
        self, judge: Caller, e: Example, explanation: str, prompt: str, logprobs: bool
    ) -> ChatRequest:
        messages = load_prompt(prompt).fill(
            explanation=explanation,
            text=plain_text(e.tokens),
            n=len(e.tokens),
            tokens="\n".join(escape(t) for t in e.tokens),
        )
        return ChatRequest(
            messages=messages,
            max_tokens=8 * len(e.tokens) + 16,
            temperature=0.0,
            json_output=not logprobs and judge.backend.capabilities.json_output,
            top_logprobs=self.top_logprobs if logprobs else 0,
        )


def parse_json_answer(text: str, n: int) -> list[float] | None:
    """The first list of exactly n numbers 0..10 in the text, else None."""
    for match in _LIST.finditer(text):
        try:
            values = json.loads(match.group(0))
        except json.JSONDecodeError:
            continue
        if len(values) == n and all(_is_level(v) for v in values):
            return [float(v) for v in values]
    return None


def _is_level(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 10


def answer_lines(text: str) -> list[tuple[int, int]]:
    """(value, character offset of its digits) of each line of the text that ends in a number
    0..10 after a tab or space (the token's own text is not checked: the count is)."""
    found, offset = [], 0
    for line in text.split("\n"):
        match = _LINE_VALUE.search(line)
        if match and int(match.group(1)) <= MAX_LEVEL:
            found.append((int(match.group(1)), offset + match.start(1)))
        offset += len(line) + 1
    return found


def parse_logprob_answer(response: ChatResponse, n: int) -> tuple[list[float] | None, int]:
    """(the n predictions, how many of them are plain digits for want of aligned logprobs);
    (None, 0) when the text does not hold exactly n answer lines."""
    lines = answer_lines(response.text)
    if len(lines) != n:
        return None, 0
    logprobs = response.logprobs or []
    chosen = [alts[0][0] if alts else "" for alts in logprobs]
    # the alternatives may run past the text (an end-of-turn token the text leaves out)
    aligned = "".join(chosen).startswith(response.text)
    starts = [0]
    for piece in chosen:
        starts.append(starts[-1] + len(piece))
    predictions, n_point = [], 0
    for value, offset in lines:
        expected = None
        if aligned:
            expected = _expected_at(logprobs, starts, response.text, offset)
        if expected is None:
            n_point += 1
        predictions.append(float(value) if expected is None else expected)
    return predictions, n_point


def _expected_at(
    logprobs: list[list[tuple[str, float]]], starts: list[int], text: str, offset: int
) -> float | None:
    """The expected value over the digit alternatives of the token where the digits at
    `offset` begin; None when that token holds more than whitespace before them, or when no
    alternative is a number 0..10."""
    k = next(i for i in range(len(logprobs)) if starts[i] <= offset < starts[i + 1])
    if text[starts[k] : offset].strip():
        return None
    chosen_digits = _digits(logprobs[k][0][0])
    p_ten_after_one = _p_next_zero(logprobs[k + 1]) if k + 1 < len(logprobs) else 0.0
    total = weighted = 0.0
    for alt, logprob in logprobs[k]:
        digits = _digits(alt)
        if digits is None or int(digits) > MAX_LEVEL:
            continue
        p = math.exp(logprob)
        total += p
        if digits == "1" and chosen_digits == "1":
            weighted += p * (p_ten_after_one * 10 + (1 - p_ten_after_one) * 1)
        else:
            weighted += p * int(digits)
    return weighted / total if total > 0 else None


def _digits(alt: str) -> str | None:
    """The number an alternative token starts with after whitespace ('\\t7' -> '7')."""
    match = re.match(r"\s*(\d+)", alt)
    return match.group(1) if match else None


def _p_next_zero(alts: list[tuple[str, float]]) -> float:
    """Probability that the token after a '1' continues it with a '0' (so the value is 10),
    among the listed alternatives."""
    total = sum(math.exp(lp) for _, lp in alts)
    zero = sum(math.exp(lp) for alt, lp in alts if alt.startswith("0"))
    return zero / total if total > 0 else 0.0


def _result(
    name: str,
    version: str,
    windows: list[Example],
    predictions: list[list[float] | None],
    keys: list[str],
    unparsable: list[dict[str, Any]],
    n_point: int,
) -> ScoreResult:
    truth = [a for e, p in zip(windows, predictions, strict=True) if p is not None for a in e.acts]
    pred = [v for p in predictions if p is not None for v in p]
    r = pearson(truth, pred)
    # A judge that predicts one value everywhere carries no information: r = 0, its chance.
    constant = bool(pred) and len(set(pred)) == 1 and len(set(truth)) > 1
    score = 0.0 if constant else r
    status = "ok" if score is not None else "unparsable" if windows and not pred else "undefined"
    metrics = {
        "pearson_r": score,
        "constant_prediction": constant,
        "n": len(windows),
        "n_tokens": len(pred),
        "n_unparsable": len(unparsable),
        "n_point_estimates": n_point,
        "unparsable_answers": unparsable,
    }
    details = [
        identity(e)
        | {
            "truth": [round(a, 3) for a in e.acts],
            "answer": None if p is None else [round(v, 2) for v in p],
        }
        for e, p in zip(windows, predictions, strict=True)
    ]
    return ScoreResult(name, version, status, score, 0.0, metrics, details, keys)
