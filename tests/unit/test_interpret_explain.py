"""The explainer's prompt (the explainer-side windows only, activating tokens marked with their
0-10 level, escaped), the parsing of its one-phrase answer, and the versioned prompt files."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field

import pytest

from monoscope.interpret.backends.base import CallResult, Capabilities, ChatRequest, ChatResponse
from monoscope.interpret.examples import Example, FeatureExamples, split_examples
from monoscope.interpret.explainer import explain_feature, explain_request, parse_explanation
from monoscope.interpret.formatting import (
    active,
    escape,
    explain_block,
    levels,
    marked_text,
    plain_text,
)
from monoscope.interpret.prompts import available, load_prompt, parse_prompt

WORDS = [" river", " stone", " cloud", " market", " winter", " paper", " engine", " garden"]


def tagged_example(kind: str, bucket: int | None, rank: int, peak: float, rng) -> Example:
    """Random words, ' bridge' firing at `peak` in the middle, and a tag token naming the
    example so a test can tell which windows a prompt shows."""
    tokens = [rng.choice(WORDS) for _ in range(9)] + [f" tag_{kind}_{bucket}_{rank}"]
    acts = [0.0] * 10
    if peak > 0:
        tokens[4], acts[4] = " bridge", peak
    return Example(kind, bucket, rank, peak, 0, 4, [0] * 10, tokens, acts, 4)


def bridge_feature() -> FeatureExamples:
    rng = random.Random(0)
    fx = FeatureExamples(feature=3, max_act=8.0, density=0.01, logit_top=[" over", "<s>"])
    fx.top = [tagged_example("top", None, r, 8.0 - 0.1 * r, rng) for r in range(10)]
    fx.quantile = [
        tagged_example("quantile", b, r, 0.8 * (b + 1), rng) for b in range(10) for r in range(3)
    ]
    fx.random = [tagged_example("random", None, r, 0.0, rng) for r in range(5)]
    return fx


@dataclass
class FakeBackend:
    capabilities: Capabilities = field(default_factory=Capabilities)
    name: str = "fake"
    model: str = "fake-explainer"

    def chat(self, request, timeout):
        raise AssertionError("the explainer must call through the Caller")

    def count_tokens(self, text: str) -> int:
        return len(text.split())


@dataclass
class FakeCaller:
    text: str
    backend: FakeBackend = field(default_factory=FakeBackend)
    requests: list[ChatRequest] = field(default_factory=list)

    def call(self, request: ChatRequest) -> CallResult:
        self.requests.append(request)
        key = hashlib.sha256(json.dumps(request.as_dict()).encode()).hexdigest()
        return CallResult(ChatResponse(self.text, 100, 5), key, False, 0.0, 0.0)


# ----------------------------------------------------------------------------- formatting
def test_levels_are_0_to_10_of_the_feature_max():
    assert levels([0.0, 0.4, 0.5, 4.0, 8.0, 9.0, -1.0], 8.0) == [0, 0, 1, 5, 10, 10, 0]
    assert levels([1.0, 2.0], 0.0) == [0, 0]


def test_marked_text_merges_runs_and_keeps_leading_spaces_outside():
    tokens = ["The", " Golden", " Gate", " is", " red", "\n"]
    marks = [False, True, True, False, True, True]
    assert marked_text(tokens, marks) == "The <<Golden Gate>> is <<red\\n>>"
    assert marked_text([" ", "x"], [True, False]) == "<< >>x"
    with pytest.raises(ValueError):
        marked_text(["a"], [True, False])


def test_escaping_keeps_marks_unambiguous():
    assert escape("a<<b>>c") == "a\\<\\<b\\>\\>c"
    assert escape("back\\slash\ttab\r\n") == "back\\\\slash\\ttab\\r\\n"
    text = marked_text(["if", " a", " <", "<", " b"], [False, True, False, False, False])
    assert text.count("<<") == 1 and text.count(">>") == 1  # only the real mark
    assert plain_text(["x", " >>", " y"]) == "x \\>\\> y"


def test_explain_block_lists_levels():
    e = tagged_example("top", None, 0, 4.0, random.Random(1))
    block = explain_block(e, 8.0)
    assert "<<bridge>>" in block and block.endswith('Activations: "bridge" 5')
    assert active(e, 8.0) == [i == 4 for i in range(10)]
    quiet = tagged_example("random", None, 0, 0.0, random.Random(1))
    assert explain_block(quiet, 8.0).endswith("Activations: none")


# ----------------------------------------------------------------------------- prompts
def test_prompt_files_parse_and_fill():
    assert {"explain-v1", "detection-v1", "fuzzing-v1", "simulation-v1"} <= set(available())
    for version in ("explain-v1", "detection-v1", "fuzzing-v1", "simulation-v1"):
        prompt = load_prompt(version)
        assert prompt.version == version
    messages = load_prompt("detection-v1").fill(explanation="x {y} $z", examples="E", n=3)
    assert [role for role, _ in messages] == ["system", "user"]
    assert "x {y} $z" in messages[1][1] and "3 numbers" in messages[1][1]
    with pytest.raises(KeyError):
        load_prompt("detection-v1").fill(explanation="x")
    with pytest.raises(ValueError, match="available"):
        load_prompt("explain-v0")
    with pytest.raises(ValueError, match="system"):
        parse_prompt("bad", "no headers here")


# ----------------------------------------------------------------------------- the explainer
def test_explainer_prompt_shows_only_the_explainer_windows():
    fx = bridge_feature()
    split = split_examples(fx)
    request = explain_request(fx, split)
    prompt = "\n".join(content for _, content in request.messages)
    for e in split.explain:
        assert f"tag_{e.kind}_{e.bucket}_{e.rank}" in prompt
    for e in split.activating + split.non_activating:
        assert f"tag_{e.kind}_{e.bucket}_{e.rank}" not in prompt
    assert prompt.count("<<bridge>>") == len(split.explain)
    assert '"bridge" 10\n' in prompt and '"bridge" 1\n' in prompt
    assert '"\\<s\\>"' in prompt  # logit tokens, escaped
    assert request.temperature == 0.0 and request.max_tokens <= 64
    assert "\\<s\\>" not in "\n".join(c for _, c in explain_request(fx, with_logits=False).messages)


def test_parse_explanation():
    assert parse_explanation('Explanation: "the word bridge".\nIt fires on...') == "the word bridge"
    assert parse_explanation("\n\n  **Answer:** river crossings  ") == "river crossings"
    assert (
        parse_explanation("- 'closing brackets in Python code'")
        == "closing brackets in Python code"
    )
    assert parse_explanation("__init__ methods") == "__init__ methods"
    assert parse_explanation('The feature detects "over" and "span".') == '"over" and "span"'
    assert parse_explanation("this feature fires on: years") == "years"
    assert parse_explanation("") is None
    assert parse_explanation(' "" ...\n') is None
    assert parse_explanation("word " * 100) is None


def test_explain_feature_ok_and_unparsable():
    fx = bridge_feature()
    caller = FakeCaller("Explanation: the word 'bridge'")
    result = explain_feature(caller, fx)
    assert result.status == "ok" and result.explanation == "the word 'bridge'"
    assert result.prompt_version == "explain-v1"
    assert len(result.cache_keys) == 1 and len(caller.requests) == 1
    split = split_examples(fx)
    assert result.examples == [list(e.key) for e in split.explain]
    json.dumps(result.examples)

    garbage = explain_feature(FakeCaller("..."), fx)
    assert garbage.status == "unparsable" and garbage.explanation is None
    assert garbage.raw == "..."


@pytest.mark.parametrize(
    ("answer", "phrase"),
    [
        ("This feature detects that the feature is a member descriptor.", "a member descriptor"),
        ("pairs of (option, value<<)>>", "pairs of (option, value)"),
        ("the tag \\<b\\>", "the tag <b>"),
    ],
)
def test_parse_drops_copied_marks_and_self_reference(answer, phrase):
    assert parse_explanation(answer) == phrase
