"""The scorers' maths on a synthetic feature with a known rule (it fires on the token ' bridge'),
judged by fake LLMs that read the real prompts: a judge that knows the rule scores ~1, a random
one ~chance, an inverted one ~0; garbage is counted, never raised; the metrics match hand
computations."""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from dataclasses import dataclass, field

import pytest
import torch

from monoscope.interpret.backends.base import (
    CallResult,
    Capabilities,
    ChatRequest,
    ChatResponse,
)
from monoscope.interpret.examples import Example, FeatureExamples, split_examples
from monoscope.interpret.metrics import (
    accuracy,
    auroc,
    average_ranks,
    balanced_accuracy,
    binary_metrics,
    f1,
    group_accuracy,
    pearson,
    precision,
    recall,
)
from monoscope.interpret.scorers import SCORERS, make_scorer
from monoscope.interpret.scorers.base import pick
from monoscope.interpret.scorers.binary import (
    Asked,
    Item,
    binary_result,
    parse_binary,
    yes_probability,
)
from monoscope.interpret.scorers.simulation import parse_json_answer, parse_logprob_answer

WORDS = [
    " river", " stone", " cloud", " market", " winter", " paper", " engine", " garden",
    " silver", " window", " forest", " letter", " orange", " castle", " planet", " music",
]  # fmt: skip
RULE = " bridge"
MAX_ACT = 10.0


# ----------------------------------------------------------------------------- the feature
def window(rng: random.Random, peak: float, n: int = 12) -> tuple[list[str], list[float]]:
    """Random words; when peak > 0, ' bridge' at one to three places firing there."""
    tokens = [rng.choice(WORDS) for _ in range(n)]
    acts = [0.0] * n
    if peak > 0:
        for i in rng.sample(range(n), rng.randint(1, 3)):
            tokens[i], acts[i] = RULE, peak * rng.uniform(0.8, 1.0)
    return tokens, acts


def example(kind: str, bucket: int | None, rank: int, tokens: list[str], acts: list[float]):
    centre = max(range(len(acts)), key=acts.__getitem__)
    return Example(
        kind, bucket, rank, acts[centre], 0, centre, [0] * len(tokens), tokens, acts, centre
    )


def bridge_feature(n_top=20, per_bucket=3, n_random=10, seed=0) -> FeatureExamples:
    """Top examples near MAX_ACT, quantile samples across 10 intervals, random non-firing."""
    rng = random.Random(seed)
    fx = FeatureExamples(feature=7, max_act=MAX_ACT, density=0.01, logit_top=[" over", " span"])
    fx.top = [example("top", None, r, *window(rng, MAX_ACT)) for r in range(n_top)]
    fx.quantile = [
        example("quantile", b, r, *window(rng, (b + 1) * MAX_ACT / 10))
        for b in range(10)
        for r in range(per_bucket)
    ]
    fx.random = [example("random", None, r, *window(rng, 0.0)) for r in range(n_random)]
    return fx


# ----------------------------------------------------------------------------- fake callers
@dataclass
class FakeBackend:
    capabilities: Capabilities = field(default_factory=Capabilities)
    name: str = "fake"
    model: str = "fake-judge"

    def chat(self, request, timeout):  # the scorers go through Caller.call only
        raise AssertionError("scorers must call through the Caller")

    def count_tokens(self, text: str) -> int:
        return len(text.split())


@dataclass
class FakeCaller:
    """Answers with answer(user_message) -> text or ChatResponse; records the requests."""

    answer: object
    backend: FakeBackend = field(default_factory=FakeBackend)
    requests: list[ChatRequest] = field(default_factory=list)

    def call(self, request: ChatRequest) -> CallResult:
        self.requests.append(request)
        out = self.answer(dict(request.messages)["user"])
        response = out if isinstance(out, ChatResponse) else ChatResponse(out, 10, 10)
        key = hashlib.sha256(json.dumps(request.as_dict()).encode()).hexdigest()
        return CallResult(response, key, cached=False, cost_usd=0.0, latency_s=0.0)


def listed(user: str) -> list[str]:
    """The numbered windows of a detection/fuzzing prompt."""
    return re.findall(r"^Example \d+: (.*)$", user, re.MULTILINE)


def binary_judge(rule, mode="rule", seed=0):
    rng = random.Random(seed)

    def answer(user: str) -> str:
        verdicts = [int(rule(text)) for text in listed(user)]
        if mode == "random":
            verdicts = [rng.randint(0, 1) for _ in verdicts]
        elif mode == "inverted":
            verdicts = [1 - v for v in verdicts]
        return f"Here you go: {verdicts}"

    return answer


def mentions_bridge(text: str) -> bool:
    return "bridge" in text


def marks_fit(text: str) -> bool:
    marks = re.findall(r"<<(.*?)>>", text)
    return bool(marks) and all(set(m.split()) == {"bridge"} for m in marks)  # runs merge


def sim_tokens(user: str) -> list[str]:
    block = user.split("one a line:\n", 1)[1]
    n = int(re.search(r"The (\d+) tokens", user).group(1))
    return block.split("\n")[:n]


def sim_values(user: str, mode: str, rng: random.Random) -> tuple[list[str], list[int]]:
    tokens = sim_tokens(user)
    values = [10 if t == RULE else 0 for t in tokens]
    if mode == "inverted":
        values = [10 - v for v in values]
    elif mode == "random":
        values = [rng.randint(0, 10) for _ in tokens]
    return tokens, values


def logprob_judge(mode="rule", seed=0):
    """Writes token<TAB>digit lines through a digit-splitting tokenizer ('10' is '1' then '0'),
    putting 0.9 on the chosen digit and 0.1 on a neighbour."""
    rng = random.Random(seed)

    def answer(user: str) -> ChatResponse:
        tokens, values = sim_values(user, mode, rng)
        pieces: list[list[tuple[str, float]]] = []
        for token, value in zip(tokens, values, strict=True):
            pieces += [[(token, 0.0)], [("\t", 0.0)]]
            other = str(value - 1 if value > 0 else 1)
            first = str(value)[0]
            pieces.append([(first, math.log(0.9)), (other, math.log(0.1))])
            if value == 10:
                pieces.append([("0", math.log(0.95)), ("\n", math.log(0.05))])
                pieces.append([("\n", 0.0)])
            else:
                pieces.append([("\n", math.log(0.95)), ("0", math.log(0.05))])
        text = "".join(p[0][0] for p in pieces)
        return ChatResponse(text, 10, len(pieces), logprobs=pieces)

    return answer


def json_judge(mode="rule", seed=0):
    rng = random.Random(seed)

    def answer(user: str) -> str:
        return json.dumps({"activations": sim_values(user, mode, rng)[1]})

    return answer


# ----------------------------------------------------------------------------- metrics
def test_metrics_against_hand_computed_values():
    truth = [1] * 8 + [0] * 2
    pred = [1] * 6 + [0] * 2 + [0, 1]
    assert accuracy(truth, pred) == pytest.approx(0.7)
    assert balanced_accuracy(truth, pred) == pytest.approx(0.5 * (6 / 8 + 1 / 2))
    assert precision(truth, pred) == pytest.approx(6 / 7)
    assert recall(truth, pred) == pytest.approx(6 / 8)
    assert f1(truth, pred) == pytest.approx(12 / 15)
    # Saying 'yes' to everything is 80% accurate on this imbalanced set, and chance balanced.
    assert accuracy(truth, [1] * 10) == pytest.approx(0.8)
    assert balanced_accuracy(truth, [1] * 10) == pytest.approx(0.5)
    assert balanced_accuracy([1, 1], [1, 0]) is None
    assert precision([1, 0], [0, 0]) is None


def test_auroc_counts_ties_as_half():
    assert average_ranks([3, 1, 3, 2]) == [3.5, 1, 3.5, 2]
    # pairs (pos, neg): 0.9>0.5, 0.9>0.1, 0.5=0.5 (half), 0.5>0.1 -> 3.5 / 4
    assert auroc([1, 1, 0, 0], [0.9, 0.5, 0.5, 0.1]) == pytest.approx(0.875)
    assert auroc([1, 0, 1, 0], [0.2, 0.2, 0.2, 0.2]) == pytest.approx(0.5)
    assert auroc([1, 1, 0], [0.0, 0.1, 0.9]) == pytest.approx(0.0)
    assert auroc([1, 1], [0.1, 0.2]) is None
    # binary answers as scores: the AUC equals the balanced accuracy
    truth, pred = [1] * 8 + [0] * 2, [1] * 6 + [0] * 2 + [0, 1]
    metrics = binary_metrics(truth, pred)
    assert metrics["auc"] == pytest.approx(metrics["balanced_accuracy"])


def test_pearson_is_pooled_and_undefined_on_constants():
    assert pearson([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    assert pearson([1, 2, 3, 4], [2, 4, 6, 8]) == pytest.approx(1.0)
    assert pearson([1, 1, 1], [1, 2, 3]) is None
    # two windows each perfectly correlated, but offset: the pooled r is not their mean (1)
    x, y = [0, 1, 5, 6], [0, 1, 0, 1]
    assert pearson(x[:2], y[:2]) == pytest.approx(1.0)
    assert pearson(x, y) == pytest.approx(np_corr(x, y))
    assert pearson(x, y) < 0.3


def np_corr(x, y) -> float:
    return float(torch.corrcoef(torch.tensor([x, y], dtype=torch.float64))[0, 1])


def test_group_accuracy():
    groups = ["top", "top", "q0", "q0", "random"]
    out = group_accuracy(groups, [1, 1, 1, 1, 0], [1, 0, 0, 0, 0])
    assert out == {"top": 0.5, "q0": 0.0, "random": 1.0}


# ----------------------------------------------------------------------------- parsing
def test_parse_binary_is_lenient_but_exact_about_the_count():
    assert parse_binary("Sure! The answers: [1, 0, 1]", 3) == [1, 0, 1]
    assert parse_binary("[1, 0]\nno wait: [0, 0, 1]", 3) == [0, 0, 1]
    assert parse_binary('["1","0"]', 2) == [1, 0]
    assert parse_binary("Example 1: 1\nExample 2: 0\n3. yes", 3) == [1, 0, 1]
    assert parse_binary("1\n0\n1\n", 3) == [1, 0, 1]
    assert parse_binary("[1, 0, 1]", 4) is None
    assert parse_binary("I think the first one matches.", 2) is None
    assert parse_binary("", 1) is None
    assert parse_binary("Yes, it mentions a bridge.", 1) == [1]
    assert parse_binary("Yes, both do.", 2) is None


def test_parse_json_answer():
    assert parse_json_answer('{"activations": [0, 3, 10]}', 3) == [0.0, 3.0, 10.0]
    assert parse_json_answer("[0, 3]", 3) is None
    assert parse_json_answer("[0, 11, 2]", 3) is None
    assert parse_json_answer("[true, 0, 2]", 3) is None


def test_logprob_expected_value_splits_the_mass_of_1_between_1_and_10():
    lp = math.log
    pieces = [
        [("a", 0.0)], [("\t", 0.0)], [("1", lp(0.6)), ("2", lp(0.4))],
        [("\n", lp(0.75)), ("0", lp(0.25))],  # P(10 | '1') = 0.25
        [("b", 0.0)], [("\t", 0.0)], [("1", lp(0.5)), ("0", lp(0.5))],
        [("0", lp(0.8)), ("\n", lp(0.2))], [("\n", 0.0)],
    ]  # fmt: skip
    response = ChatResponse("a\t1\nb\t10\n", 0, len(pieces), logprobs=pieces)
    predictions, n_point = parse_logprob_answer(response, 2)
    assert n_point == 0
    assert predictions == pytest.approx([0.6 * (0.25 * 10 + 0.75) + 0.4 * 2, 0.5 * 8.2])
    # a tokenizer with a '10' token: that alternative is worth 10
    pieces = [[("x", 0.0)], [("\t", 0.0)], [("10", lp(0.5)), ("1", lp(0.5))], [("\n", 0.0)]]
    predictions, _ = parse_logprob_answer(ChatResponse("x\t10\n", 0, 4, logprobs=pieces), 1)
    assert predictions == pytest.approx([5.5])
    # no logprobs to align: the plain digits, counted
    predictions, n_point = parse_logprob_answer(ChatResponse("x\t7\ny\t0", 0, 0), 2)
    assert (predictions, n_point) == ([7.0, 0.0], 2)
    assert parse_logprob_answer(ChatResponse("x\t7\n", 0, 0), 2) == (None, 0)


# ----------------------------------------------------------------------------- detection
@pytest.fixture(scope="module")
def big_feature() -> FeatureExamples:
    """Enough held-out windows (100 activating, 100 not) for chance to show within 0.12."""
    return bridge_feature(n_top=40, per_bucket=9, n_random=100, seed=1)


@pytest.mark.parametrize(
    ("mode", "low", "high"), [("rule", 0.99, 1.0), ("random", 0.38, 0.62), ("inverted", 0.0, 0.01)]
)
def test_detection_judges(big_feature, mode, low, high):
    fx = big_feature
    split = split_examples(fx)
    caller = FakeCaller(binary_judge(mentions_bridge, mode))
    result = make_scorer("detection").score(fx, split, "the word bridge", caller)
    assert result.status == "ok" and result.chance == 0.5
    assert low <= result.score <= high
    assert result.metrics["n"] == len(split.activating) + len(split.non_activating) == 200
    assert result.metrics["n_unparsable"] == 0
    assert len(caller.requests) == 40  # batches of 5
    assert len(result.cache_keys) == 40
    assert {"top", "q0", "q9", "random"} <= set(result.metrics["per_quantile"])
    json.dumps(result.details)  # storable as it is
    held_out = {e.key for e in split.activating + split.non_activating}
    assert {(d["kind"], d["bucket"], d["rank"]) for d in result.details} == held_out
    for d in result.details:
        assert d["truth"] == int(d["kind"] != "random")
        if mode == "rule":
            assert d["answer"] == d["truth"]


def test_detection_batches_mix_classes_and_never_show_explainer_windows():
    fx = bridge_feature()
    split = split_examples(fx)
    caller = FakeCaller(binary_judge(mentions_bridge))
    make_scorer("detection", batch_size=8).score(fx, split, "bridges", caller)
    prompts = "\n".join(dict(r.messages)["user"] for r in caller.requests)
    n_windows = len(listed(prompts))
    assert n_windows == len(split.activating) + len(split.non_activating)
    assert all(r.temperature == 0.0 for r in caller.requests)
    assert any(0 < sum(map(mentions_bridge, listed(dict(r.messages)["user"]))) < 8
               for r in caller.requests)  # fmt: skip


def test_detection_counts_garbage_and_never_raises():
    fx = bridge_feature()
    split = split_examples(fx)
    garbage = FakeCaller(lambda user: "I'm not sure what you mean.")
    result = make_scorer("detection").score(fx, split, "bridges", garbage)
    assert result.status == "unparsable" and result.score is None
    assert result.metrics["n_unparsable"] == result.metrics["n"] == 40
    assert all(d["answer"] is None for d in result.details)
    assert result.metrics["unparsable_answers"][0]["raw"] == "I'm not sure what you mean."

    calls = iter(range(1000))
    rule = binary_judge(mentions_bridge)
    half = FakeCaller(lambda user: rule(user) if next(calls) % 2 else "[1, 0")
    result = make_scorer("detection").score(fx, split, "bridges", half)
    assert result.status == "ok" and result.score == pytest.approx(1.0)
    assert 0 < result.metrics["n_unparsable"] < 40


def test_detection_uses_hard_negatives_and_subsamples_across_intervals():
    fx = bridge_feature()
    split = split_examples(fx)
    rng = random.Random(5)
    neighbours = [example("neighbour", 3, r, *window(rng, 0.0)) for r in range(6)]
    scorer = make_scorer("detection", max_activating=10)
    caller = FakeCaller(binary_judge(mentions_bridge))
    result = scorer.score(fx, split, "bridges", caller, hard_negatives=neighbours)
    assert result.metrics["n_positive"] == 10
    assert result.metrics["n_negative"] == len(split.non_activating) + 6
    assert result.metrics["per_quantile"]["neighbour"] == 1.0
    kinds = {(d["kind"], d["bucket"]) for d in result.details if d["truth"]}
    assert len(kinds) == 10  # one of each group (top, q0..q9 minus one) rather than all top


def test_pick_spreads_over_groups():
    fx = bridge_feature()
    chosen = pick(split_examples(fx).activating, 11, random.Random(0))
    assert len({(e.kind, e.bucket) for e in chosen}) == 11


def test_requests_are_deterministic_per_seed():
    fx = bridge_feature()
    split = split_examples(fx)
    runs = []
    for seed in (0, 0, 1):
        caller = FakeCaller(binary_judge(mentions_bridge))
        runs.append(make_scorer("detection").score(fx, split, "bridges", caller, rng_seed=seed))
    assert runs[0].cache_keys == runs[1].cache_keys != runs[2].cache_keys


# ----------------------------------------------------------------------------- fuzzing
@pytest.mark.parametrize(
    ("mode", "low", "high"), [("rule", 0.99, 1.0), ("random", 0.38, 0.62), ("inverted", 0.0, 0.01)]
)
def test_fuzzing_judges(big_feature, mode, low, high):
    fx = big_feature
    split = split_examples(fx)
    caller = FakeCaller(binary_judge(marks_fit, mode))
    result = make_scorer("fuzzing").score(fx, split, "the word bridge", caller)
    assert result.status == "ok" and result.chance == 0.5
    assert low <= result.score <= high
    assert result.metrics["n"] == len(split.activating) == 100
    correct = [d for d in result.details if d["truth"]]
    assert len(correct) == 50  # half of the windows marked at random
    by_key = {e.key: e for e in split.activating}
    n_active = [sum(a > 0.5 for a in e.acts) for e in split.activating]
    n_wrong = math.ceil(sum(n_active) / len(n_active))
    for d in result.details:
        e = by_key[(d["kind"], d["bucket"], d["rank"])]
        fired = [i for i, a in enumerate(e.acts) if a > 0.5]
        if d["truth"]:
            assert d["marked"] == fired
        else:
            assert len(d["marked"]) == n_wrong and not set(d["marked"]) & set(fired)


def test_fuzzing_escapes_marks_in_the_text():
    fx = bridge_feature(n_top=4, per_bucket=1, n_random=0)
    fx.top[1].tokens[0] = " <<bridge>>"  # text that looks like a mark, not one
    caller = FakeCaller(binary_judge(marks_fit))
    result = make_scorer("fuzzing").score(fx, split_examples(fx), "bridge", caller)
    prompt = dict(caller.requests[0].messages)["user"]
    assert "\\<\\<bridge\\>\\>" in prompt
    assert result.score == pytest.approx(1.0)


# ----------------------------------------------------------------------------- logprobs answers
LOGPROBS = FakeBackend(Capabilities(logprobs=True))


def one_window(user: str) -> str:
    """The window of a one-window (logprobs mode) detection/fuzzing prompt."""
    return re.search(r"^Text: (.*)$", user, re.MULTILINE).group(1)


def first_token(probs: dict[str, float], text: str = "The") -> ChatResponse:
    """A one-token answer `text` whose alternatives are `probs`, most likely first."""
    ranked = sorted(probs.items(), key=lambda kv: -kv[1])
    return ChatResponse(text, 10, 1, logprobs=[[(t, math.log(p)) for t, p in ranked]])


def yes_no_judge(rule, mode="rule", seed=0):
    """Writes prose ('The' is its most likely first token) but puts 0.3 on the right digit and
    0.1 on the wrong one ('1'/'0' with and without a space, 'Yes'/'no'); random: a random
    share of the same mass; inverted: the wrong digit gets the 0.3."""
    rng = random.Random(seed)

    def answer(user: str) -> ChatResponse:
        right = int(rule(one_window(user)))
        p_yes = 0.75 if right else 0.25
        if mode == "random":
            p_yes = rng.random()
        elif mode == "inverted":
            p_yes = 1 - p_yes
        yes, no = 0.4 * p_yes, 0.4 * (1 - p_yes)
        return first_token({"The": 0.5, "1": yes / 2, " Yes": yes / 2, " 0": no / 2, "no": no / 2})

    return answer


def test_yes_probability_sums_the_alternatives_meaning_yes_and_no():
    response = first_token({"I": 0.5, "1": 0.2, " YES": 0.1, "0": 0.1, "\nNo": 0.05, "2": 0.05})
    assert yes_probability(response) == pytest.approx(0.3 / 0.45)
    assert yes_probability(first_token({"I": 0.9, "2": 0.1})) is None
    assert yes_probability(ChatResponse("1", 10, 1)) is None  # no logprobs came back


@pytest.mark.parametrize("scorer", ["detection", "fuzzing"])
# random: 100 vs 100 windows, the AUC's standard deviation is about 0.04
@pytest.mark.parametrize(
    ("mode", "low", "high"), [("rule", 0.99, 1.0), ("random", 0.35, 0.65), ("inverted", 0.0, 0.01)]
)
def test_logprob_answers_judges(big_feature, scorer, mode, low, high):
    fx = big_feature
    split = split_examples(fx)
    rule = mentions_bridge if scorer == "detection" else marks_fit
    caller = FakeCaller(yes_no_judge(rule, mode), LOGPROBS)
    result = make_scorer(scorer).score(fx, split, "the word bridge", caller)
    assert result.status == "ok" and result.version == f"{scorer}-v2"
    assert result.metrics["answers"] == "logprobs"
    assert result.metrics["prompt_version"] == f"{scorer}-one-v1"
    assert low <= result.score <= high and low <= result.metrics["auc"] <= high
    assert result.metrics["n_unparsable"] == 0
    n = result.metrics["n"]
    assert len(caller.requests) == len(result.cache_keys) == n  # one window a call
    assert all(len(re.findall(r"^Text: ", dict(r.messages)["user"], re.MULTILINE)) == 1
               for r in caller.requests)  # fmt: skip
    assert {(r.top_logprobs, r.max_tokens, r.temperature) for r in caller.requests} == {(20, 1, 0)}
    truth, p = [d["truth"] for d in result.details], [d["p"] for d in result.details]
    assert result.metrics["auc"] == pytest.approx(auroc(truth, p), abs=1e-3)  # p: 6 decimals
    if mode == "rule":
        assert {d["p"] for d in result.details} == {0.75, 0.25}
    json.dumps(result.details)


def test_auc_ranks_the_probabilities_not_the_answers():
    """Positives at p 0.9, 0.6, 0.3 and negatives at 0.7, 0.2: 4 of the 6 pairs are ordered
    right (AUC 2/3), while the 0/1 answers (1, 1, 0 / 1, 0) would give 3.5/6; an unparsable
    window counts in neither."""
    fx = bridge_feature(n_top=6, per_bucket=0, n_random=0)
    truth = [True, True, True, False, False, True]
    items = [Item(e, "", t) for e, t in zip(fx.top, truth, strict=True)]
    p_yes = [0.9, 0.6, 0.3, 0.7, 0.2, None]
    answers = [None if p is None else int(p > 0.5) for p in p_yes]
    asked = Asked(items, answers, list(range(6)), ["k"] * 6, [{"call": 5}], "logprobs", "x",
                  p_yes=p_yes)  # fmt: skip
    result = binary_result("detection", "detection-v2", 0.5, asked)
    assert result.metrics["auc"] == pytest.approx(4 / 6)
    assert result.score == pytest.approx(0.5 * (2 / 3 + 1 / 2))
    assert result.metrics["n_unparsable"] == 1 and result.details[5]["p"] is None
    text = Asked(items, answers, [0] * 6, ["k"], [], "text", "x")
    assert binary_result("detection", "v", 0.5, text).metrics["auc"] == pytest.approx(3.5 / 6)


def test_logprob_answers_without_a_yes_or_no_are_unparsable():
    fx = bridge_feature()
    split = split_examples(fx)
    prose = FakeCaller(lambda user: first_token({"The": 0.6, "I": 0.3, "2": 0.1}), LOGPROBS)
    result = make_scorer("detection").score(fx, split, "bridges", prose)
    assert result.status == "unparsable" and result.score is None
    assert result.metrics["n_unparsable"] == result.metrics["n"] == len(prose.requests)
    first = result.metrics["unparsable_answers"][0]
    assert first["raw"] == "The" and first["alternatives"] == ["The", "I", "2"]
    assert all(d["answer"] is None and d["p"] is None for d in result.details)


def test_answer_mode_follows_the_judge_unless_chosen():
    fx = bridge_feature()
    split = split_examples(fx)
    text_judge = FakeCaller(binary_judge(mentions_bridge), LOGPROBS)
    result = make_scorer("detection", answers="text").score(fx, split, "bridges", text_judge)
    assert (
        result.metrics["answers"] == "text" and result.metrics["prompt_version"] == "detection-v1"
    )
    assert len(text_judge.requests) == 8 and result.score == pytest.approx(1.0)
    plain = FakeCaller(binary_judge(mentions_bridge))  # no logprobs: auto asks in batches
    assert make_scorer("fuzzing").score(fx, split, "b", plain).metrics["answers"] == "text"
    with pytest.raises(ValueError, match="answers"):
        make_scorer("detection", answers="vibes")


def test_logprob_requests_are_deterministic_per_seed():
    fx = bridge_feature()
    split = split_examples(fx)
    keys = []
    for seed in (0, 0, 1):
        caller = FakeCaller(yes_no_judge(marks_fit), LOGPROBS)
        keys.append(make_scorer("fuzzing").score(fx, split, "b", caller, rng_seed=seed).cache_keys)
    assert keys[0] == keys[1] != keys[2]


# ----------------------------------------------------------------------------- simulation
@pytest.mark.parametrize("kind", ["logprobs", "json"])
@pytest.mark.parametrize(("mode", "low", "high"), [("rule", 0.8, 1.0), ("random", -0.12, 0.12),
                                                   ("inverted", -1.0, -0.8)])  # fmt: skip
def test_simulation_judges(kind, mode, low, high):
    fx = bridge_feature(seed=2)
    split = split_examples(fx)
    if kind == "logprobs":
        caller = FakeCaller(logprob_judge(mode), FakeBackend(Capabilities(logprobs=True)))
    else:
        caller = FakeCaller(json_judge(mode), FakeBackend(Capabilities(json_output=True)))
    result = make_scorer("simulation").score(fx, split, "the word bridge", caller)
    assert result.status == "ok" and result.chance == 0.0
    assert result.version == "simulation-v1" and result.metrics["mode"] == kind
    prompt = "simulation-v1" if kind == "logprobs" else "simulation-json-v1"
    assert result.metrics["prompt_version"] == prompt
    assert low <= result.score <= high
    n = len(split.activating) + len(split.non_activating)
    assert result.metrics["n"] == len(caller.requests) == n
    assert result.metrics["n_tokens"] == 12 * n and result.metrics["n_point_estimates"] == 0
    request = caller.requests[0]
    assert request.top_logprobs == (15 if kind == "logprobs" else 0)
    assert request.json_output == (kind == "json")
    # pooled over every token of every window, against the true activations
    truth = [a for d in result.details for a in d["truth"]]
    pred = [v for d in result.details for v in d["answer"]]
    assert result.score == pytest.approx(pearson(truth, pred), abs=1e-3)
    json.dumps(result.details)


def test_simulation_expected_values_come_from_the_logprobs():
    fx = bridge_feature(n_top=2, per_bucket=1, n_random=1)
    caller = FakeCaller(logprob_judge(), FakeBackend(Capabilities(logprobs=True)))
    result = make_scorer("simulation").score(fx, split_examples(fx), "bridge", caller)
    answers = {v for d in result.details for v in d["answer"]}
    # 0 -> 0.9*0 + 0.1*1; 10 -> '1' (0.9) split 0.95/0.05 between 10 and 1, '9' at 0.1
    expected = [0.1, 0.9 * (0.95 * 10 + 0.05) + 0.1 * 9]
    assert sorted(answers) == pytest.approx(expected, abs=0.006)  # details keep 2 decimals


def test_simulation_length_mismatch_and_constant_predictions():
    fx = bridge_feature(n_top=4, per_bucket=1, n_random=2)
    split = split_examples(fx)
    short = FakeCaller(lambda user: json.dumps({"activations": [0, 1]}))
    result = make_scorer("simulation").score(fx, split, "bridge", short)
    assert result.status == "unparsable" and result.score is None
    assert result.metrics["n_unparsable"] == result.metrics["n"]
    flat = FakeCaller(lambda user: json.dumps({"activations": [0] * 12}))
    result = make_scorer("simulation").score(fx, split, "bridge", flat)
    assert result.status == "ok" and result.score == 0.0
    assert result.metrics["constant_prediction"] is True


def test_simulation_mode_is_checked():
    with pytest.raises(ValueError, match="mode"):
        make_scorer("simulation", mode="telepathy")
    with pytest.raises(ValueError, match="unknown scorer"):
        make_scorer("vibes")
    assert set(SCORERS) == {"detection", "fuzzing", "simulation", "embedding"}


# ----------------------------------------------------------------------------- embedding
class BagOfWords:
    """Counts of hashed words: cosine similarity is word overlap."""

    name = "bag-of-words"

    def embed(self, texts: list[str]) -> torch.Tensor:
        out = torch.zeros(len(texts), 256)
        for i, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                out[i, int(hashlib.md5(word.encode()).hexdigest(), 16) % 256] += 1
        return out


def test_embedding_scorer_maths_with_a_bag_of_words():
    fx = bridge_feature()
    split = split_examples(fx)
    scorer = make_scorer("embedding")
    result = scorer.score(fx, split, "bridge", BagOfWords())
    assert result.status == "ok" and result.chance == 0.5 and result.cache_keys == []
    assert result.score == pytest.approx(1.0)
    unrelated = scorer.score(fx, split, "zebra", BagOfWords())
    assert unrelated.score == pytest.approx(0.5)  # all similarities 0: every pair a tie
    assert result.metrics["per_quantile"]["random"] == pytest.approx(0.0)
    assert result.metrics["per_quantile"]["top"] > 0
    assert result.metrics["n"] == len(split.activating) + len(split.non_activating)
    json.dumps(result.details)


def test_embedding_with_the_real_sentence_embedder():
    """all-MiniLM-L6-v2 from the installed wheel (small: loads and embeds in ~1 s on a CPU)."""
    from monoscope.interpret.embedding import SentenceEmbedder

    rng = random.Random(3)
    fx = FeatureExamples(feature=1, max_act=MAX_ACT, density=0.01)
    fx.top = [example("top", None, r, *window(rng, MAX_ACT, n=8)) for r in range(12)]
    fx.random = [example("random", None, r, *window(rng, 0.0, n=8)) for r in range(6)]
    result = make_scorer("embedding").score(
        fx, split_examples(fx), "the word bridge", SentenceEmbedder()
    )
    assert result.score > 0.9


def test_no_negatives_leaves_the_headline_undefined():
    fx = bridge_feature(n_top=6, per_bucket=1, n_random=0)
    split = split_examples(fx)
    result = make_scorer("detection").score(
        fx, split, "bridge", FakeCaller(binary_judge(mentions_bridge))
    )
    assert result.status == "undefined" and result.score is None
    assert result.metrics["accuracy"] == 1.0
    empty = split_examples(FeatureExamples(feature=0, max_act=1.0, density=0.0))
    result = make_scorer("fuzzing").score(fx, empty, "bridge", FakeCaller(binary_judge(marks_fit)))
    assert result.status == "undefined" and result.metrics["n"] == 0
