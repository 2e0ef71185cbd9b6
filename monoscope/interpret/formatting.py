"""Windows as text for an LLM: activating tokens marked <<like this>>, activations on a 0-10
scale (Bills et al. 2023; Delphi), and the text escaped so the marks are unambiguous.

Escaping: a backslash, '<' and '>' in the text become '\\\\', '\\<' and '\\>', so '<<' and '>>'
only ever come from a mark; newlines, tabs and carriage returns become '\\n', '\\t', '\\r' so a
window stays on one line and a token list stays one token a line.
"""

from __future__ import annotations

from collections.abc import Sequence

from monoscope.interpret.examples import Example

MAX_LEVEL = 10
"""Activations are shown as integers 0..MAX_LEVEL, MAX_LEVEL at the feature's maximum."""
OPEN, CLOSE = "<<", ">>"

_ESCAPES = str.maketrans(
    {"\\": "\\\\", "<": "\\<", ">": "\\>", "\n": "\\n", "\t": "\\t", "\r": "\\r"}
)


def escape(text: str) -> str:
    """Text with the mark characters and line breaks escaped (see the module docstring)."""
    return text.translate(_ESCAPES)


def levels(acts: Sequence[float], max_act: float) -> list[int]:
    """Activations as integers 0..10: round(10 * act / max_act), negatives 0, the top 10.

    A token below 5% of the maximum shows as 0 and is not marked: the explainer is shown what a
    reader would call the feature firing, not its faintest traces."""
    if max_act <= 0:
        return [0] * len(acts)
    return [min(MAX_LEVEL, max(0, round(MAX_LEVEL * a / max_act))) for a in acts]


def active(example: Example, max_act: float) -> list[bool]:
    """Which tokens of the window count as activating: level >= 1."""
    return [lv > 0 for lv in levels(example.acts, max_act)]


def marked_text(tokens: Sequence[str], marks: Sequence[bool]) -> str:
    """The window's text with each run of marked tokens wrapped in << >>; a run's leading spaces
    stay outside the mark (' <<bridge>>', not '<< bridge>>')."""
    if len(tokens) != len(marks):
        raise ValueError(f"{len(tokens)} tokens but {len(marks)} marks")
    parts: list[str] = []
    run: list[str] = []
    for token, mark in zip(tokens, marks, strict=True):
        if mark:
            run.append(token)
            continue
        if run:
            parts.append(_wrap("".join(run)))
            run = []
        parts.append(escape(token))
    if run:
        parts.append(_wrap("".join(run)))
    return "".join(parts)


def _wrap(text: str) -> str:
    body = text.lstrip(" ")
    lead = text[: len(text) - len(body)]
    if not body:  # a run of spaces only is marked as it is
        return f"{OPEN}{escape(text)}{CLOSE}"
    return f"{lead}{OPEN}{escape(body)}{CLOSE}"


def plain_text(tokens: Sequence[str]) -> str:
    """The window's text, escaped, without marks."""
    return escape("".join(tokens))


def activation_list(tokens: Sequence[str], token_levels: Sequence[int]) -> str:
    """The marked tokens and their levels, in order: '"bridge" 10, "river" 3'."""
    return ", ".join(
        f'"{escape(t.strip()) or escape(t)}" {lv}'
        for t, lv in zip(tokens, token_levels, strict=True)
        if lv > 0
    )


def explain_block(example: Example, max_act: float) -> str:
    """One example as the explainer sees it: the marked text, then the marked tokens' levels."""
    token_levels = levels(example.acts, max_act)
    text = marked_text(example.tokens, [lv > 0 for lv in token_levels])
    return f"{text}\nActivations: {activation_list(example.tokens, token_levels) or 'none'}"
