"""Specificity: windows binned by activation interval, the judge's 0-3 grades parsed and
counted, the report and its stacked histogram written."""

from __future__ import annotations

import json
import math
import re
import sqlite3
import threading
from dataclasses import dataclass, field

import pytest

from monoscope.analyze.schema import FeatureStoreError
from monoscope.interpret import SpecificityConfig, run
from monoscope.interpret.backends import factory
from monoscope.interpret.backends.base import CallResult, Capabilities, ChatRequest, ChatResponse
from monoscope.interpret.examples import Example, FeatureExamples
from monoscope.interpret.specificity import (
    gather_windows,
    grade_features,
    grade_from_logprobs,
    highlight,
    interval_of,
    parse_grade,
)
from monoscope.interpret.specificity_report import (
    PLOT_FILE,
    REPORT_FILE,
    feature_means,
    write_report,
)
from monoscope.testing import random_feature_store, write_interpretation

N_INTERVALS = 10


def example(kind, bucket, rank, activation, centre_token="cat") -> Example:
    tokens = ["The", " old", f" {centre_token}", " sat", " {here}", "\n"]
    return Example(
        kind=kind,
        bucket=bucket,
        rank=rank,
        activation=activation,
        context=rank,
        position=2,
        token_ids=[11, 12, 13, 14, 15, 16],
        tokens=tokens,
        acts=[0.0, 0.0, activation, 0.0, 0.0, 0.0],
        centre=2,
    )


def feature(fid: int) -> FeatureExamples:
    """max 10: top windows at 10 and 9.5 (interval 9) and 4.2 (interval 4), quantile windows in
    buckets 0, 4 and 9, two non-firing windows. The centre token tells the stub judge the grade."""
    return FeatureExamples(
        feature=fid,
        max_act=10.0,
        density=0.01,
        top=[
            example("top", None, 0, 10.0, "cat"),
            example("top", None, 1, 9.5, "cat"),
            example("top", None, 2, 4.2, "dog"),
        ],
        quantile=[
            example("quantile", 0, 0, 0.5, "sat"),
            example("quantile", 4, 0, 4.5, "dog"),
            example("quantile", 9, 0, 9.1, "cat"),
        ],
        random=[example("random", None, 0, 0.0, "mat"), example("random", None, 1, 0.0, "hat")],
    )


ANSWERS = {"cat": "3", "dog": "Score: 2", "sat": "**1**", "mat": "0", "hat": "The grade is 7."}
"""Highlighted token -> the stub judge's answer ('hat' gets an out-of-rubric answer)."""


class StubJudge:
    """A fake Caller: answers by the highlighted token, records every request."""

    def __init__(self, answer=None):
        self.backend = RuleBackend()  # no logprobs: grades parsed from the text
        self.requests: list[ChatRequest] = []
        self.answer = answer or (lambda token: ANSWERS[token])
        self.lock = threading.Lock()

    def call(self, request: ChatRequest) -> CallResult:
        with self.lock:
            self.requests.append(request)
        token = re.search(r"<<(\w+)>>", request.messages[-1][1]).group(1)
        text = self.answer(token)
        return CallResult(ChatResponse(text, 100, 1), f"key-{len(self.requests)}", False, 0.001, 0)


def test_parse_grade_is_lenient_but_only_takes_rubric_grades():
    assert [parse_grade(a) for a in ("3", " 2\n", "Score: 1", "**0**", "3/3", "2 out of 3")] == [
        3,
        2,
        1,
        0,
        3,
        2,
    ]
    for garbage in ("", "three", "7", "10", "The grade is 12", "I cannot tell."):
        assert parse_grade(garbage) is None


def test_windows_binned_by_bucket_and_top_by_activation():
    windows = gather_windows(feature(0), N_INTERVALS)
    got = [(w.label, w.example.kind, w.example.rank) for w in windows]
    assert got == [
        ("not firing", "random", 0),
        ("not firing", "random", 1),
        ("0", "quantile", 0),
        ("4", "quantile", 0),
        ("4", "top", 2),
        ("9", "quantile", 0),
        ("9", "top", 0),
        ("9", "top", 1),
    ]
    assert interval_of(10.0, 10.0, 10) == 9 and interval_of(0.99, 10.0, 10) == 0
    assert interval_of(1.0, 0.0, 10) == 0


def test_per_interval_samples_at_most_n_per_interval_reproducibly():
    one = gather_windows(feature(0), N_INTERVALS, per_interval=1, seed=3)
    assert [w.label for w in one] == ["not firing", "0", "4", "9"]
    again = gather_windows(feature(0), N_INTERVALS, per_interval=1, seed=3)
    assert [w.example.key for w in one] == [w.example.key for w in again]


def test_counts_means_and_unparsable_are_exact():
    judge = StubJudge()
    report = grade_features(judge, [feature(0), feature(1)], {0: "cats", 1: "animals"})
    assert len(judge.requests) == 16
    pooled = report["pooled"]["intervals"]
    # per feature: not firing = {0, unparsable}; 0 = {1}; 4 = {2, 2}; 9 = {3, 3, 3}
    assert pooled["not firing"] == {"counts": [2, 0, 0, 0], "n": 4, "n_unparsable": 2, "mean": 0.0}
    assert pooled["0"] == {"counts": [0, 2, 0, 0], "n": 2, "n_unparsable": 0, "mean": 1.0}
    assert pooled["4"]["counts"] == [0, 0, 4, 0] and pooled["4"]["mean"] == 2.0
    assert pooled["9"]["counts"] == [0, 0, 0, 6] and pooled["9"]["mean"] == 3.0
    assert pooled["5"] == {"counts": [0, 0, 0, 0], "n": 0, "n_unparsable": 0, "mean": None}
    assert report["pooled"]["n_unparsable"] == 2
    one = report["features"][0]
    assert one["feature"] == 0 and one["explanation"] == "cats"
    assert one["mean_firing"] == pytest.approx((1 + 2 * 2 + 3 * 3) / 6)
    bad = [g for g in one["grades"] if g["grade"] is None]
    assert [(g["interval"], g["raw"]) for g in bad] == [("not firing", "The grade is 7.")]
    assert report["calls"] == {"n": 16, "cached": 0, "cost_usd": pytest.approx(0.016)}
    assert all(g["key"].startswith("key-") for g in one["grades"])
    assert feature_means(report) == {0: one["mean_firing"], 1: one["mean_firing"]}


def test_garbage_judge_is_counted_unparsable_without_crashing():
    report = grade_features(
        StubJudge(lambda _: "I'm not sure what you mean."), [feature(0)], {0: "x"}
    )
    assert report["pooled"]["n_unparsable"] == 8
    assert all(v["counts"] == [0, 0, 0, 0] for v in report["pooled"]["intervals"].values())
    assert report["features"][0]["mean_firing"] is None
    assert feature_means(report) == {}


def test_prompt_has_the_explanation_rubric_and_marked_text():
    judge = StubJudge()
    grade_features(judge, [feature(0)], {0: "the word {cat}"})
    request = judge.requests[-1]  # the top window at 9.5, centre ' cat'
    assert request.max_tokens <= 16 and request.temperature == 0.0
    (system_role, system), (role, content) = request.messages
    assert (system_role, role) == ("system", "user") and isinstance(content, str)
    assert "Explanation: the word {cat}" in content
    assert "Text: The old <<cat>> sat {here}\\n" in content  # text, escaped, centre marked
    assert "[11, 12" not in content  # token ids are never shown
    assert "3: The feature cleanly identifies the activating text." in system
    assert "0: The feature is completely irrelevant throughout the context" in system
    assert highlight(example("top", None, 0, 1.0, "<b>")) == "The old <<\\<b\\>>> sat {here}\\n"


def test_features_without_explanation_or_examples_are_skipped_and_listed():
    empty = FeatureExamples(feature=7, max_act=0.0, density=0.0)
    judge = StubJudge()
    report = grade_features(judge, [feature(0), feature(3), empty], {0: "cats", 7: "nothing"})
    assert [f["feature"] for f in report["features"]] == [0]
    assert report["skipped"] == [
        {"feature": 3, "reason": "no explanation"},
        {"feature": 7, "reason": "no examples"},
    ]
    assert len(judge.requests) == 8


def test_report_json_and_png_are_written(tmp_path):
    report = grade_features(StubJudge(), [feature(0), feature(1)], {0: "cats", 1: "dogs"})
    report |= {"judge": "stub:judge"}
    written = write_report(report, tmp_path / "out")
    assert written == [tmp_path / "out" / REPORT_FILE, tmp_path / "out" / PLOT_FILE]
    png = (tmp_path / "out" / PLOT_FILE).read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000
    assert json.loads((tmp_path / "out" / REPORT_FILE).read_text()) == report
    assert feature_means(tmp_path / "out" / REPORT_FILE) == feature_means(report)
    assert not list((tmp_path / "out").glob(".*tmp"))  # no temp file left behind


def test_config_validates_and_defaults_next_to_the_store():
    cfg = SpecificityConfig(db="runs/x/features.db")
    assert str(cfg.out_dir) == "runs/x/specificity" and cfg.features == "random:50"
    with pytest.raises(ValueError, match="per_interval"):
        SpecificityConfig(per_interval=-1)


# ----------------------------------------------------------------------------- end to end
@dataclass
class RuleBackend:
    """A judge behind the real client: grades by the highlighted token ' wN' as N % 4 and
    answers anything else with garbage."""

    name: str = "openai"
    model: str = "rule-judge"
    capabilities: Capabilities = field(default_factory=Capabilities)
    sent: int = 0

    def chat(self, request: ChatRequest, timeout: float) -> ChatResponse:
        self.sent += 1
        token = re.search(r"Text: .*<<(.*?)>>", request.messages[-1][1]).group(1)
        return ChatResponse(rule_answer(token), 50, 1)

    def count_tokens(self, text: str) -> int:
        return len(text.split())


def rule_answer(token: str) -> str:
    return f"Grade: {int(token[1:]) % 4}" if re.fullmatch(r"w\d+", token) else "hmm"


def expected_counts(db, fid: int) -> dict[str, list[int]]:
    """Counts per interval computed from the store's rows directly: quantile windows in their
    bucket, top windows in their activation's tenth of the max, random ones not firing."""
    conn = sqlite3.connect(db)
    (max_act,) = conn.execute("SELECT max_act FROM features WHERE id = ?", (fid,)).fetchone()
    vocab = [t for (t,) in conn.execute("SELECT text FROM vocab ORDER BY id")]
    counts: dict[str, list[int]] = {}
    rows = conn.execute(
        "SELECT kind, bucket, activation, tokens, centre FROM examples WHERE feature = ?", (fid,)
    )
    for kind, bucket, activation, tokens, centre in rows:
        label = {
            "random": "not firing",
            "quantile": str(bucket),
            "top": str(min(int(activation / max_act * 10), 9)),
        }[kind]
        grade = parse_grade(rule_answer(vocab[json.loads(tokens)[centre]].strip() or "x"))
        slot = counts.setdefault(label, [0, 0, 0, 0, 0])
        slot[4 if grade is None else grade] += 1
    conn.close()
    return counts


@pytest.fixture
def explained_store(tmp_path):
    db = random_feature_store(tmp_path / "features.db", n_features=12, seed=1)
    explanations = {fid: f"explanation {fid}" for fid in range(0, 12, 2)}
    # scores add each scored feature's 3 non-firing windows
    write_interpretation(
        db, explanations, scores={0: {"detection": 0.6}, 2: {"detection": 0.7}}, n_random=3
    )
    return db


def test_run_specificity_end_to_end_through_the_client_and_cache(explained_store, monkeypatch):
    backend = RuleBackend()
    monkeypatch.setattr(factory, "make_backend", lambda *a, **k: backend)
    cfg = SpecificityConfig(
        db=str(explained_store), backend="openai", model="rule-judge", features="0:4",
        progress=False,
    )  # fmt: skip
    report = run(cfg)
    assert [f["feature"] for f in report["features"]] == [0, 2]
    assert report["skipped"] == [
        {"feature": 1, "reason": "no explanation"},
        {"feature": 3, "reason": "no explanation"},
    ]
    for entry in report["features"]:
        got = {
            label: [*v["counts"], v["n_unparsable"]]
            for label, v in entry["intervals"].items()
            if v["n"]
        }
        assert got == expected_counts(explained_store, entry["feature"])
        assert entry["explanation"] == f"explanation {entry['feature']}"
        assert entry["explainer"] == "local:test"
    n_windows = sum(len(f["grades"]) for f in report["features"])
    assert n_windows == 2 * (20 + 10 * 2 + 3) and backend.sent == n_windows
    assert report["judge"] == "openai:rule-judge"
    out = explained_store.parent / "specificity"
    assert json.loads((out / REPORT_FILE).read_text())["pooled"] == report["pooled"]
    assert (out / PLOT_FILE).stat().st_size > 5000

    again = run(cfg)  # everything from the call cache: nothing sent twice
    assert backend.sent == n_windows and again["run"]["client"]["n_cached"] == n_windows
    assert again["pooled"] == report["pooled"]


def test_plan_sends_nothing_and_unfinished_store_is_refused(explained_store, tmp_path, monkeypatch):
    backend = RuleBackend()
    monkeypatch.setattr(factory, "make_backend", lambda *a, **k: backend)
    out = tmp_path / "planned"
    cfg = SpecificityConfig(
        db=str(explained_store), backend="openai", model="rule-judge", features="0:4",
        out=str(out), plan=True, progress=False,
    )  # fmt: skip
    plan = run(cfg)["plan"]
    assert plan["features"] == 2 and plan["calls"] == 2 * 43 and plan["cached_calls"] == 0
    assert backend.sent == 0 and not out.exists()
    unfinished = random_feature_store(tmp_path / "u.db", n_features=4, meta={"complete": False})
    with pytest.raises(FeatureStoreError, match="has not finished"):
        run(SpecificityConfig(db=str(unfinished), progress=False))


def test_budget_stops_cleanly_with_the_finished_features_reported(
    explained_store, tmp_path, monkeypatch
):
    backend = RuleBackend()
    monkeypatch.setattr(factory, "make_backend", lambda *a, **k: backend)
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"rule-judge": {"input": 1000.0, "output": 1000.0}}))
    cfg = SpecificityConfig(
        db=str(explained_store), backend="openai", model="rule-judge", features="0:4",
        prices=str(prices), budget_usd=3.0, max_concurrency=1, progress=False,
    )  # fmt: skip
    report = run(cfg)  # feature 0's 43 calls cost $2.19, feature 2 does not fit
    assert [f["feature"] for f in report["features"]] == [0]
    assert report["run"]["not_done"] == [2] and "budget" in report["run"]["stop_reason"]
    assert report["run"]["client"]["spent_usd"] <= 3.0
    saved = json.loads((explained_store.parent / "specificity" / REPORT_FILE).read_text())
    assert saved["run"]["not_done"] == [2]


@pytest.mark.integration
def test_local_backend_grades_or_counts_every_window(tmp_path):
    """The built-in model as the judge: every window gets a record, graded or unparsable (a
    135M model is a pipeline check here, not a judge worth reading)."""
    words = [" the", " cat", " sat", " on", " a", " mat", " bridge", " river", ".", "\n"]
    db = random_feature_store(tmp_path / "features.db", n_features=2, vocab=words)
    write_interpretation(db, {0: "the word 'bridge'"}, scores={0: {"detection": 0.5}}, n_random=1)
    cfg = SpecificityConfig(db=str(db), features="0", per_interval=1, progress=False)
    report = run(cfg)
    pooled = report["pooled"]["intervals"]
    assert sum(v["n"] for v in pooled.values()) == 11 == report["calls"]["n"]
    assert all(v["n"] == 1 for v in pooled.values())
    assert all(g["raw"] is not None for g in report["features"][0]["grades"])


# ----------------------------------------------------------------------------- logprobs grades
def alternatives(probs: dict[str, float]) -> list[list[tuple[str, float]]]:
    """One answer token's alternatives, most likely first, as a backend returns them."""
    ranked = sorted(probs.items(), key=lambda kv: -kv[1])
    return [[(token, math.log(p)) for token, p in ranked]]


class LogprobJudge(StubJudge):
    """A fake Caller whose backend returns logprobs: it writes prose ('The'), but puts the
    rubric grade of the highlighted token (ANSWERS' digit) among the first token's alternatives
    with probability 0.5 and 0.1 on each other grade; 'hat' gets no digit at all."""

    def __init__(self):
        super().__init__()
        self.backend = RuleBackend(capabilities=Capabilities(logprobs=True))

    def call(self, request: ChatRequest) -> CallResult:
        with self.lock:
            self.requests.append(request)
        token = re.search(r"<<(\w+)>>", request.messages[-1][1]).group(1)
        grade = parse_grade(ANSWERS[token])
        probs = {"The": 0.2, " I": 0.1}
        if grade is not None:
            probs |= {str(g): 0.5 if g == grade else 0.1 for g in range(4)}
        response = ChatResponse("The", 100, 1, logprobs=alternatives(probs))
        return CallResult(response, f"key-{len(self.requests)}", False, 0.0, 0)


def test_grade_from_logprobs_takes_the_most_likely_rubric_digit():
    got = grade_from_logprobs(ChatResponse("The", 1, 1, alternatives(
        {"The": 0.6, " 2": 0.2, "3": 0.1, "7": 0.05, "0": 0.05}
    )))  # fmt: skip
    assert got["grade"] == 2
    assert got["grade_probs"] == pytest.approx([0.05 / 0.35, 0, 0.2 / 0.35, 0.1 / 0.35], abs=1e-4)
    assert got["expected_grade"] == pytest.approx((2 * 0.2 + 3 * 0.1) / 0.35, abs=1e-4)
    nothing = grade_from_logprobs(ChatResponse("I", 1, 1, alternatives({"I": 0.9, "10": 0.1})))
    assert nothing == {"grade": None, "expected_grade": None, "grade_probs": None}
    assert grade_from_logprobs(ChatResponse("3", 1, 1))["grade"] is None  # no logprobs at all


def test_a_judge_with_logprobs_is_graded_from_them():
    judge = LogprobJudge()
    report = grade_features(judge, [feature(0)], {0: "cats"}, n_intervals=N_INTERVALS)
    grades = {(g["kind"], g["rank"], g["bucket"]): g for g in report["features"][0]["grades"]}
    assert all(r.top_logprobs == 20 and r.max_tokens == 1 for r in judge.requests)
    assert all(r.temperature == 0.0 for r in judge.requests)
    assert {g["grade_source"] for g in grades.values()} == {"logprobs"}
    assert grades[("top", 0, None)]["grade"] == 3 and grades[("top", 2, None)]["grade"] == 2
    assert grades[("quantile", 0, 0)]["grade"] == 1 and grades[("random", 0, None)]["grade"] == 0
    hat = grades[("random", 1, None)]
    assert hat["grade"] is None and hat["raw"] == "The"
    cat = grades[("top", 0, None)]
    assert cat["grade_probs"] == pytest.approx([0.125, 0.125, 0.125, 0.625])
    assert cat["expected_grade"] == pytest.approx((0 + 1 + 2) * 0.125 + 3 * 0.625)
    assert report["pooled"]["n_unparsable"] == 1


def test_a_judge_without_logprobs_is_graded_from_its_text():
    judge = StubJudge()
    report = grade_features(judge, [feature(0)], {0: "cats"}, n_intervals=N_INTERVALS)
    records = report["features"][0]["grades"]
    assert {g["grade_source"] for g in records} == {"text"}
    assert all(g["grade_probs"] is None for g in records)
    assert all(r.top_logprobs == 0 and r.max_tokens == 8 for r in judge.requests)
