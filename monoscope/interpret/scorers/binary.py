"""A yes/no judge over numbered windows in batches, the engine of detection and fuzzing: each
batch is one call answered by a list of 0s and 1s, parsed leniently; a batch that does not parse
is recorded (answers None, its raw text kept) and counted, never raised."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any

from monoscope.interpret.backends.base import Caller, ChatRequest
from monoscope.interpret.examples import Example
from monoscope.interpret.metrics import binary_metrics, group_accuracy
from monoscope.interpret.prompts import load_prompt
from monoscope.interpret.scorers.base import ScoreResult, group, identity

RAW_KEPT = 500
"""Characters of an unparsable answer kept in the metrics."""

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


def ask_in_batches(
    caller: Caller,
    version: str,
    explanation: str,
    items: list[Item],
    batch_size: int,
    rng: random.Random,
) -> tuple[list[Item], list[int | None], list[int], list[str], list[dict[str, Any]]]:
    """Shuffle the items, ask about them `batch_size` at a time. Returns the items in the order
    asked, each one's answer (None: its batch did not parse), its batch index, the calls' cache
    keys, and the unparsable batches' raw answers."""
    items = list(items)
    rng.shuffle(items)
    prompt = load_prompt(version)
    answers: list[int | None] = []
    batches: list[int] = []
    keys: list[str] = []
    unparsable: list[dict[str, Any]] = []
    for b, start in enumerate(range(0, len(items), batch_size)):
        batch = items[start : start + batch_size]
        listing = "\n\n".join(f"Example {i}: {item.text}" for i, item in enumerate(batch, 1))
        request = ChatRequest(
            messages=prompt.fill(explanation=explanation, examples=listing, n=len(batch)),
            max_tokens=16 + 4 * len(batch),
            temperature=0.0,
        )
        result = caller.call(request)
        keys.append(result.key)
        parsed = parse_binary(result.response.text, len(batch))
        if parsed is None:
            unparsable.append({"batch": b, "raw": result.response.text[:RAW_KEPT]})
        answers += parsed if parsed is not None else [None] * len(batch)
        batches += [b] * len(batch)
    return items, answers, batches, keys, unparsable


def binary_result(
    name: str,
    version: str,
    items: list[Item],
    answers: list[int | None],
    batches: list[int],
    keys: list[str],
    unparsable: list[dict[str, Any]],
) -> ScoreResult:
    """Balanced accuracy as the headline (chance 0.5), Delphi's metrics over the answered items,
    accuracy per group (top, each quantile, non-activating kinds), and the details."""
    answered = [(it, a) for it, a in zip(items, answers, strict=True) if a is not None]
    truth = [it.truth for it, _ in answered]
    pred = [bool(a) for _, a in answered]
    metrics: dict[str, Any] = binary_metrics(truth, pred) if answered else {}
    metrics["per_quantile"] = group_accuracy([group(it.example) for it, _ in answered], truth, pred)
    metrics |= {"n": len(items), "n_unparsable": len(items) - len(answered)}
    metrics["unparsable_answers"] = unparsable
    score = metrics.get("balanced_accuracy")
    status = "ok" if score is not None else "unparsable" if items and not answered else "undefined"
    details = [
        identity(it.example) | {"truth": int(it.truth), "answer": a, "batch": b} | it.extra
        for it, a, b in zip(items, answers, batches, strict=True)
    ]
    return ScoreResult(name, version, status, score, 0.5, metrics, details, keys)
