"""A yes/no judge over windows, the engine of detection and fuzzing, in one of two answer modes:
- text: the windows in numbered batches, each batch one call answered by a list of 0s and 1s,
  parsed leniently;
- logprobs: one window a call, answered by one token; the answer is read from that token's top
  alternatives (p1: the probability of those meaning yes, '1' or 'yes'; p0: no), so a judge that
  writes prose still answers, and p1 / (p0 + p1) is a score for a real AUROC.
An answer that does not parse is recorded (answer None, its raw text kept) and counted, never
raised."""

from __future__ import annotations

import abc
import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from monoscope.interpret.backends.base import Caller, ChatRequest, ChatResponse
from monoscope.interpret.examples import Example, FeatureExamples, Split
from monoscope.interpret.metrics import auroc, binary_metrics, group_accuracy
from monoscope.interpret.prompts import load_prompt
from monoscope.interpret.scorers.base import ScoreResult, feature_rng, group, identity

MODES = ("auto", "text", "logprobs")
"""How the judge answers: auto is logprobs when its backend returns them, else text."""
RAW_KEPT = 500
"""Characters of an unparsable answer kept in the metrics."""
TOP_LOGPROBS = 20
"""First-token alternatives asked for in logprobs mode (OpenAI's maximum)."""
ALTERNATIVES_KEPT = 5
"""Alternatives of an unparsable one-token answer kept in the metrics, to see what it said."""

_LIST = re.compile(r"\[([^\[\]]*)\]")
_NUMBERING = re.compile(r"^\W*(?:(?:example|excerpt)\s*)?\d+\s*[.):\-]\s*", re.IGNORECASE)
_WORDS = {"0": 0, "1": 1, "false": 0, "true": 1, "no": 0, "yes": 1}


@dataclass
class Item:
    """One window as the judge sees it, and the right answer."""

    example: Example
    text: str
    truth: bool
    extra: dict[str, Any] = field(default_factory=dict)
    """Kept in the details (e.g. fuzzing's marked positions)."""


@dataclass
class Asked:
    """The judge's answers to the items, in the order asked."""

    items: list[Item]
    answers: list[int | None]
    """1, 0, or None where the answer did not parse."""
    calls: list[int]
    """Each item's call: its batch (text mode) or its own call (logprobs mode)."""
    keys: list[str]
    """The calls' cache keys."""
    unparsable: list[dict[str, Any]]
    """The raw answers of the calls that did not parse."""
    mode: str
    prompt: str
    """The prompt version asked with."""
    p_yes: list[float | None] | None = None
    """logprobs mode: each item's p1 / (p0 + p1) (None where unparsable); text mode: None."""


def parse_binary(text: str, n: int) -> list[int] | None:
    """n answers of 0/1 (or yes/no, true/false) from a judge's text: the first JSON-like list of
    exactly n of them anywhere in it, else n lines each holding one (after an optional
    'Example 3:' numbering), else for n = 1 a text that opens with one; None otherwise."""
    for match in _LIST.finditer(text):
        words = [w.strip("\"'").lower() for w in re.split(r"[,\s]+", match.group(1).strip())]
        if len(words) == n and all(w in _WORDS for w in words):
            return [_WORDS[w] for w in words]
    answers = []
    for line in text.splitlines():
        words = re.findall(r"\w+", _NUMBERING.sub("", line.strip()).lower())
        if len(words) == 1 and words[0] in _WORDS:
            answers.append(_WORDS[words[0]])
    if len(answers) == n:
        return answers
    # one window: an answer that opens with its verdict ("Yes, it mentions...") counts too
    first = re.match(r"\W*(\w+)", text)
    if n == 1 and first and first.group(1).lower() in _WORDS:
        return [_WORDS[first.group(1).lower()]]
    return None


def check_answers(answers: str) -> None:
    """A scorer's answers option must be one of MODES."""
    if answers not in MODES:
        raise ValueError(f"answers must be one of {', '.join(MODES)}, got {answers!r}")


def answer_mode(answers: str, caller: Caller) -> str:
    """'text' or 'logprobs' for an answers option of MODES and this judge."""
    if answers == "auto":
        return "logprobs" if caller.backend.capabilities.logprobs else "text"
    return answers


def ask_in_batches(
    caller: Caller,
    version: str,
    explanation: str,
    items: list[Item],
    batch_size: int,
    rng: random.Random,
) -> Asked:
    """Shuffle the items, ask about them `batch_size` at a time, each batch answered by a list;
    a batch that does not parse leaves its items' answers None."""
    items = list(items)
    rng.shuffle(items)
    prompt = load_prompt(version)
    asked = Asked(items, [], [], [], [], "text", version)
    for b, start in enumerate(range(0, len(items), batch_size)):
        batch = items[start : start + batch_size]
        listing = "\n\n".join(f"Example {i}: {item.text}" for i, item in enumerate(batch, 1))
        request = ChatRequest(
            messages=prompt.fill(explanation=explanation, examples=listing, n=len(batch)),
            max_tokens=16 + 4 * len(batch),
            temperature=0.0,
        )
        result = caller.call(request)
        asked.keys.append(result.key)
        parsed = parse_binary(result.response.text, len(batch))
        if parsed is None:
            asked.unparsable.append({"batch": b, "raw": result.response.text[:RAW_KEPT]})
        asked.answers += parsed if parsed is not None else [None] * len(batch)
        asked.calls += [b] * len(batch)
    return asked


def ask_one_by_one(caller: Caller, version: str, explanation: str, items: list[Item]) -> Asked:
    """Ask about each item in its own call of one answer token with its top alternatives; the
    answer is 1 where p1 > p0 (see yes_probability)."""
    prompt = load_prompt(version)
    p_yes: list[float | None] = []
    asked = Asked(list(items), [], [], [], [], "logprobs", version, p_yes=p_yes)
    for i, item in enumerate(items):
        request = ChatRequest(
            messages=prompt.fill(explanation=explanation, text=item.text),
            max_tokens=1,
            temperature=0.0,
            top_logprobs=TOP_LOGPROBS,
        )
        result = caller.call(request)
        asked.keys.append(result.key)
        p = yes_probability(result.response)
        if p is None:
            asked.unparsable.append(unparsable_token(i, result.response))
        p_yes.append(p)
        asked.answers.append(None if p is None else int(p > 0.5))
        asked.calls.append(i)
    return asked


def yes_probability(response: ChatResponse) -> float | None:
    """p1 / (p0 + p1) over the first generated token's alternatives, p1 the total probability
    of those meaning yes ('1', 'yes', 'true' in any case, whitespace around), p0 of those
    meaning no; None when neither is among them (or no logprobs came back)."""
    if not response.logprobs:
        return None
    mass = [0.0, 0.0]
    for token, logprob in response.logprobs[0]:
        value = _WORDS.get(token.strip().lower())
        if value is not None:
            mass[value] += math.exp(logprob)
    total = mass[0] + mass[1]
    return mass[1] / total if total > 0 else None


def unparsable_token(call: int, response: ChatResponse) -> dict[str, Any]:
    """The record of a one-token answer without a yes/no alternative: its text and its most
    likely alternatives."""
    alternatives = [t for t, _ in (response.logprobs or [[]])[0][:ALTERNATIVES_KEPT]]
    return {"call": call, "raw": response.text[:RAW_KEPT], "alternatives": alternatives}


def binary_result(name: str, version: str, chance: float, asked: Asked) -> ScoreResult:
    """Balanced accuracy as the headline (chance 0.5), Delphi's metrics over the answered items,
    accuracy per group (top, each quantile, non-activating kinds), and the details. In logprobs
    mode the AUC ranks the items by p_yes (in text mode it ranks the 0/1 answers)."""
    answered = [i for i, a in enumerate(asked.answers) if a is not None]
    truth = [asked.items[i].truth for i in answered]
    pred = [bool(asked.answers[i]) for i in answered]
    metrics: dict[str, Any] = binary_metrics(truth, pred) if answered else {}
    if asked.p_yes is not None and answered:
        # An item has its p_yes exactly when its answer parsed (ask_one_by_one).
        p_yes = [p for i in answered if (p := asked.p_yes[i]) is not None]
        metrics["auc"] = auroc(truth, p_yes)
    groups = [group(asked.items[i].example) for i in answered]
    metrics["per_quantile"] = group_accuracy(groups, truth, pred)
    metrics |= {"n": len(asked.items), "n_unparsable": len(asked.items) - len(answered)}
    metrics |= {"answers": asked.mode, "prompt_version": asked.prompt}
    metrics["unparsable_answers"] = asked.unparsable
    score = metrics.get("balanced_accuracy")
    status = (
        "ok" if score is not None else "unparsable" if asked.items and not answered else "undefined"
    )
    details = []
    for i, it in enumerate(asked.items):
        record = identity(it.example) | {"truth": int(it.truth), "answer": asked.answers[i]}
        if asked.p_yes is not None:
            p = asked.p_yes[i]
            record["p"] = None if p is None else round(p, 6)
        record["batch" if asked.mode == "text" else "call"] = asked.calls[i]
        details.append(record | it.extra)
    return ScoreResult(name, version, status, score, chance, metrics, details, asked.keys)


@dataclass
class BinaryScorer(abc.ABC):
    """A scorer whose judge answers 0/1 per window (detection, fuzzing): the options they
    share, and `score`; a subclass says which windows are asked about (`items`)."""

    batch_size: int = 5
    """Windows per call in text mode (Delphi asks about a handful at once)."""
    max_activating: int | None = None
    """Held-out activating windows used at most (None: all), spread over the intervals."""
    answers: str = "auto"
    """text, logprobs, or auto: logprobs when the judge's backend returns them."""
    version: str = ""
    """The scorer's version, stored with every score: a new prompt means a new version."""
    text_prompt: str = ""
    """The prompt of text mode (a batch of windows a call)."""
    logprobs_prompt: str = ""
    """The prompt of logprobs mode (one window a call, a one-token answer)."""
    name: str = ""
    chance: float = 0.5

    def __post_init__(self) -> None:
        check_answers(self.answers)

    @abc.abstractmethod
    def items(
        self, fx: FeatureExamples, split: Split, rng: random.Random, hard_negatives: Sequence
    ) -> list[Item]:
        """The windows to ask about, each with its right answer."""

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
        items = self.items(fx, split, rng, hard_negatives)
        if answer_mode(self.answers, judge) == "logprobs":
            asked = ask_one_by_one(judge, self.logprobs_prompt, explanation, items)
        else:
            prompt = self.text_prompt
            asked = ask_in_batches(judge, prompt, explanation, items, self.batch_size, rng)
        return binary_result(self.name, self.version, self.chance, asked)
