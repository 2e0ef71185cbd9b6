"""A feature's explanation: its explainer-side examples shown to an LLM, which answers with one
short phrase (Bills et al. 2023; Delphi). The held-out examples never reach this prompt."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from monoscope.interpret.backends.base import Caller, ChatRequest
from monoscope.interpret.examples import FeatureExamples, Split, split_examples
from monoscope.interpret.formatting import escape, explain_block
from monoscope.interpret.prompts import load_prompt

DEFAULT_VERSION = "explain-v1"
ANSWER_TOKENS = 48
MAX_CHARS = 200
"""A longer first line is a paragraph, not the one phrase asked for."""
LOGIT_TOKENS = 10

_PREFIX = re.compile(
    r"^(?:(?:explanation|answer|phrase)\s*[:\-]|(?:the|this) feature (?:detects|fires on)\s*:?"
    r"|that (?:the|this) feature (?:is|detects)\s+)\s*",
    re.IGNORECASE,
)
_MARKS = re.compile(r"<<|>>|\\(?=[<>])")
"""The prompt's activation marks and their escapes, which a small explainer copies."""
_QUOTES = "\"'`“”‘’"


@dataclass
class ExplanationResult:
    status: str
    """'ok' or 'unparsable' (then explanation is None and raw holds the answer)."""
    explanation: str | None
    raw: str
    examples: list[list]
    """[[kind, bucket, rank], ...] of the examples shown, in prompt order."""
    cache_keys: list[str] = field(default_factory=list)
    prompt_version: str = DEFAULT_VERSION


def explain_request(
    fx: FeatureExamples,
    split: Split | None = None,
    *,
    with_logits: bool = True,
    version: str = DEFAULT_VERSION,
) -> ChatRequest:
    """The explainer's request: split.explain's windows (top examples first, then one per
    activation interval) with their activating tokens marked, and optionally the tokens the
    feature's direct logit effect promotes most."""
    split = split or split_examples(fx)
    blocks = [
        f"Example {i}: {explain_block(e, fx.max_act)}" for i, e in enumerate(split.explain, 1)
    ]
    logits = ""
    if with_logits and fx.logit_top:
        listed = ", ".join(f'"{escape(t)}"' for t in fx.logit_top[:LOGIT_TOKENS])
        logits = f"\nTokens the feature makes more likely to come next: {listed}\n"
    messages = load_prompt(version).fill(examples="\n\n".join(blocks), logits=logits)
    return ChatRequest(messages=messages, max_tokens=ANSWER_TOKENS, temperature=0.0, seed=0)


def parse_explanation(text: str) -> str | None:
    """The phrase in an answer: its first non-empty line without a label such as
    'Explanation:', list bullets, the prompt's <<marks>> (an unescaped << or >> is taken for
    one, as the prompt writes a literal < as \\<), quotes or a final full stop; None when
    nothing readable is left or the line is a paragraph (over MAX_CHARS)."""
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    line = _MARKS.sub("", line.lstrip("-•>#")).strip()
    while True:
        stripped = _unwrap(_PREFIX.sub("", line))
        if stripped == line:
            break
        line = stripped
    if not re.search(r"\w", line) or len(line) > MAX_CHARS:
        return None
    return line


def _unwrap(text: str) -> str:
    """Without markdown emphasis, a final full stop, or quotes around it all ('"a" or "b"' keeps
    its quotes: they are not a pair around the whole)."""
    text = text.strip(" *").rstrip(".").strip()
    inner = text[1:-1]
    if len(text) >= 2 and text[0] in _QUOTES and text[-1] in _QUOTES and text[0] not in inner:
        text = text[1:-1].strip()
    return text


def explain_feature(
    caller: Caller,
    fx: FeatureExamples,
    split: Split | None = None,
    *,
    with_logits: bool = True,
    version: str = DEFAULT_VERSION,
) -> ExplanationResult:
    """One call: the feature's explanation, or the raw answer marked unparsable."""
    split = split or split_examples(fx)
    result = caller.call(explain_request(fx, split, with_logits=with_logits, version=version))
    raw = result.response.text
    explanation = parse_explanation(raw)
    return ExplanationResult(
        status="ok" if explanation is not None else "unparsable",
        explanation=explanation,
        raw=raw,
        examples=[list(e.key) for e in split.explain],
        cache_keys=[result.key],
        prompt_version=version,
    )
