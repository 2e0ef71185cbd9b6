"""Specificity, the paper's analysis (Templeton et al. 2024, METHODS.md §5.1): a judge grades
windows at every activation interval against the feature's explanation on the 0-3 rubric, and
the report is the frequency of each grade per interval.

Windows come from the feature store: the quantile examples (interval = their bucket, linear
between 0 and the feature's max, 0 lowest), the top examples (binned by their own activation,
so a rarely firing feature's top windows land where their activation is rather than being
forced into the top interval), and the non-firing random examples as the interval
"not firing". Each window is shown as text with its centre token between << and >>.

A judge whose backend returns logprobs answers with one token, and its grade is the most likely
of '0'..'3' among that token's top alternatives (a small model that would write prose still
grades; the expected grade and the four probabilities are kept too); another judge's grade is
parsed from its text. Each record names its grade_source.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from typing import Any

from monoscope.interpret.backends.base import Caller, ChatRequest, ChatResponse
from monoscope.interpret.config import SpecificityConfig
from monoscope.interpret.examples import Example, FeatureExamples
from monoscope.interpret.formatting import marked_text
from monoscope.interpret.prompts import Prompt, load_prompt
from monoscope.interpret.scorers.binary import TOP_LOGPROBS
from monoscope.interpret.specificity_report import (
    GRADES,
    NOT_FIRING,
    RUBRIC,
    call_totals,
    interval_bounds,
    interval_labels,
    require_matplotlib,
    tally,
    write_report,
)

PROMPT_VERSION = "specificity-v1"
ANSWER_TOKENS = 8
"""The judge answers one digit; a few tokens of slack for 'Score: 3'-style answers (text)."""
_DIGIT = re.compile(r"(?<!\d)(\d)(?!\d)")


@dataclass(frozen=True)
class Window:
    """One window to grade: `interval` is None for a non-firing example."""

    feature: int
    interval: int | None
    example: Example

    @property
    def label(self) -> str:
        return NOT_FIRING if self.interval is None else str(self.interval)


def interval_of(activation: float, max_act: float, n_intervals: int) -> int:
    """The linear activation interval (0 lowest) holding `activation`, as analyze bins them."""
    if max_act <= 0:
        return 0
    return min(max(int(activation / max_act * n_intervals), 0), n_intervals - 1)


def gather_windows(
    fx: FeatureExamples, n_intervals: int, per_interval: int = 0, seed: int = 0
) -> list[Window]:
    """The feature's windows by interval, not firing first then interval 0 up; with
    per_interval > 0 a seeded sample of at most that many per interval."""
    groups: dict[int | None, list[Example]] = {None: list(fx.random)}
    for e in fx.quantile:
        groups.setdefault(min(e.bucket or 0, n_intervals - 1), []).append(e)
    for e in fx.top:
        groups.setdefault(interval_of(e.activation, fx.max_act, n_intervals), []).append(e)
    rng = random.Random(seed * 1_000_003 + fx.feature)
    windows = []
    for interval in [None, *range(n_intervals)]:
        members = groups.get(interval, [])
        if 0 < per_interval < len(members):
            members = rng.sample(members, per_interval)
        windows += [Window(fx.feature, interval, e) for e in members]
    return windows


def highlight(example: Example) -> str:
    """The window's text, escaped as formatting.py does, with its centre token between << and
    >> (the leading space of a word token stays outside the mark)."""
    return marked_text(example.tokens, [i == example.centre for i in range(len(example.tokens))])


def judge_request(
    prompt: Prompt, explanation: str, example: Example, logprobs: bool = False
) -> ChatRequest:
    """The judge's request for one window: the rubric (system), the explanation and the text;
    with logprobs, one answer token and its top alternatives."""
    messages = prompt.fill(explanation=explanation, text=highlight(example))
    if logprobs:
        return ChatRequest(
            messages=messages, max_tokens=1, temperature=0.0, top_logprobs=TOP_LOGPROBS
        )
    return ChatRequest(messages=messages, max_tokens=ANSWER_TOKENS, temperature=0.0)


def parse_grade(answer: str) -> int | None:
    """The first stand-alone digit of the answer if it is a rubric grade (0-3), else None
    ('Score: 3', '3/3' and '**2**' parse; '', 'five', '7' and '10' do not)."""
    match = _DIGIT.search(answer)
    if match is None:
        return None
    grade = int(match.group(1))
    return grade if grade in GRADES else None


def grade_from_logprobs(response: ChatResponse) -> dict[str, Any]:
    """{grade, expected_grade, grade_probs} from the first answer token's alternatives: the
    probability of each grade (alternatives '0'..'3', whitespace stripped) renormalised over
    the four, the most likely one and the mean; all None when no grade is among them."""
    mass = [0.0] * len(GRADES)
    for token, logprob in (response.logprobs or [[]])[0]:
        grade = token.strip()
        if grade.isdigit() and int(grade) in GRADES:
            mass[int(grade)] += math.exp(logprob)
    total = sum(mass)
    if total == 0:
        return {"grade": None, "expected_grade": None, "grade_probs": None}
    probs = [m / total for m in mass]
    return {
        "grade": max(GRADES, key=probs.__getitem__),
        "expected_grade": round(sum(g * p for g, p in zip(GRADES, probs, strict=True)), 4),
        "grade_probs": [round(p, 4) for p in probs],
    }


def read_grade(response: ChatResponse, logprobs: bool) -> dict[str, Any]:
    """The record's grade fields: from the logprobs, or parsed from the text."""
    if logprobs:
        return {"grade_source": "logprobs", **grade_from_logprobs(response)}
    grade = parse_grade(response.text)
    return {"grade_source": "text", "grade": grade, "expected_grade": None, "grade_probs": None}


def grade_windows(caller: Caller, windows: list[Window], explanation: str) -> list[dict[str, Any]]:
    """Ask the judge about each window, in order: one record per window with the grade (None
    when unparsable) and how it was read, the raw answer and the call's cache key."""
    prompt = load_prompt(PROMPT_VERSION)
    logprobs = caller.backend.capabilities.logprobs
    records = []
    for window in windows:
        e = window.example
        result = caller.call(judge_request(prompt, explanation, e, logprobs))
        records.append(
            {
                "interval": window.label,
                "kind": e.kind,
                "bucket": e.bucket,
                "rank": e.rank,
                "activation": e.activation,
                **read_grade(result.response, logprobs),
                "raw": result.response.text,
                "key": result.key,
                "cached": result.cached,
                "cost_usd": result.cost_usd,
            }
        )
    return records


def grade_feature(
    caller: Caller,
    fx: FeatureExamples,
    explanation: str,
    n_intervals: int,
    per_interval: int = 0,
    seed: int = 0,
) -> dict[str, Any]:
    """One feature's report entry: its explanation, grades per interval and every record."""
    windows = gather_windows(fx, n_intervals, per_interval, seed)
    records = grade_windows(caller, windows, explanation)
    entry = {"feature": fx.feature, "explanation": explanation, "max_act": fx.max_act}
    return {**entry, **tally(records, interval_labels(n_intervals)), "grades": records}


def partition(
    features: list[FeatureExamples], explanations: dict[int, str]
) -> tuple[list[FeatureExamples], list[dict[str, Any]]]:
    """(the features to grade, the skipped ones with the reason: no explanation, no examples)."""
    gradable, skipped = [], []
    for fx in features:
        if fx.feature not in explanations:
            skipped.append({"feature": fx.feature, "reason": "no explanation"})
        elif not (fx.top or fx.quantile or fx.random):
            skipped.append({"feature": fx.feature, "reason": "no examples"})
        else:
            gradable.append(fx)
    return gradable, skipped


def build_report(
    entries: list[dict[str, Any]], skipped: list[dict[str, Any]], n_intervals: int, **run: Any
) -> dict[str, Any]:
    """The report of the graded features' entries, pooled over them; `run`: provenance to
    record (judge, store, per_interval, seed, ...)."""
    records = [r for entry in entries for r in entry["grades"]]
    return {
        "analysis": "specificity",
        "prompt_version": PROMPT_VERSION,
        "rubric": RUBRIC,
        **run,
        "n_intervals": n_intervals,
        "intervals": interval_bounds(n_intervals),
        "pooled": tally(records, interval_labels(n_intervals)),
        "calls": call_totals(records),
        "features": entries,
        "skipped": skipped,
    }


def grade_features(
    caller: Caller,
    features: list[FeatureExamples],
    explanations: dict[int, str],
    n_intervals: int = 10,
    per_interval: int = 0,
    seed: int = 0,
) -> dict[str, Any]:
    """Grade each feature's windows against its explanation, one call at a time, into a report
    (without the judge's name: run_specificity adds it). Features without an explanation or
    without any window are skipped and listed."""
    gradable, skipped = partition(features, explanations)
    entries = [
        grade_feature(caller, fx, explanations[fx.feature], n_intervals, per_interval, seed)
        for fx in gradable
    ]
    return build_report(entries, skipped, n_intervals, per_interval=per_interval, seed=seed)


def _read_store(cfg: SpecificityConfig) -> tuple[list[FeatureExamples], dict[int, dict], int]:
    """(the selected features' examples, their explanations {feature: {explainer,
    prompt_version, text}}, the store's number of activation intervals)."""
    from monoscope.analyze.schema import read_meta
    from monoscope.interpret.examples import load_features, read_vocab
    from monoscope.interpret.selection import select_features
    from monoscope.interpret.session import open_store
    from monoscope.interpret.store import latest_explanations

    conn = open_store(cfg.db)  # refuses a store analyze has not finished
    try:
        ids = select_features(conn, cfg.features, cfg.seed)
        chosen = latest_explanations(conn, ids, cfg.explainer)
        features = load_features(conn, ids, read_vocab(conn))
        n_intervals = int(read_meta(conn).get("params", {}).get("n_quantiles", 10))
    finally:
        conn.close()
    return [features[i] for i in ids if i in features], chosen, n_intervals


def run_specificity(cfg: SpecificityConfig, lm=None) -> dict[str, Any]:
    """Grade the selected features' explanations as `cfg` says and write specificity.json (and
    specificity.png) into cfg.out_dir; returns the report (with --plan: {"plan": ...}, nothing
    sent or written). A budget reached or a backend error stops the run cleanly: the report
    holds the features finished and lists the rest (a rerun answers them from the cache).
    `lm`: a loaded LanguageModel the local backend may use."""
    from monoscope.interpret.calls import run_jobs
    from monoscope.interpret.commands import plan_requests
    from monoscope.interpret.session import judge_name, open_client

    if cfg.plot and not cfg.plan:
        require_matplotlib()  # fail before any call is paid for, not after
    features, chosen, n_intervals = _read_store(cfg)
    explanations = {fid: row["text"] for fid, row in chosen.items()}
    gradable, skipped = partition(features, explanations)
    client = open_client(cfg, lm)
    sample = {"per_interval": cfg.per_interval, "seed": cfg.seed}

    def grade(fx: FeatureExamples, caller=client) -> dict[str, Any]:
        entry = grade_feature(caller, fx, explanations[fx.feature], n_intervals, **sample)
        source = chosen[fx.feature]
        return entry | {
            "explainer": source["explainer"],
            "explainer_prompt": source["prompt_version"],
        }

    if cfg.plan:
        return plan_requests(
            client, {fx.feature: fx for fx in gradable}, grade, {"skipped": skipped}
        )
    entries: dict[int, dict[str, Any]] = {}
    outcome = run_jobs(
        gradable,
        grade,
        max_concurrency=cfg.max_concurrency,
        on_done=lambda fx, entry: entries.__setitem__(fx.feature, entry),
        progress_desc="specificity",
        client=client,
        progress=cfg.progress,
    )
    report = build_report(
        [entries[fx.feature] for fx in gradable if fx.feature in entries],
        skipped,
        n_intervals,
        store=str(cfg.db),
        judge=judge_name(cfg),
        explainers=cfg.explainer or "each feature's latest ok explanation",
        selection=cfg.features,
        out=str(cfg.out_dir),
        **sample,
        run=_run_record(outcome, client),
    )
    write_report(report, cfg.out_dir, plot=cfg.plot)
    return report


def _run_record(outcome, client) -> dict[str, Any]:
    """How the run ended (calls.JobsSummary) and what the client did, for the report."""
    return {
        "not_done": [fx.feature for fx in outcome.not_done],
        "failed": [{"feature": fx.feature, "error": err} for fx, err in outcome.failed],
        "stop_reason": outcome.stop_reason,
        "client": client.stats.as_dict(),
    }
