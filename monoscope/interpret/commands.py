"""`monoscope explain` and `monoscope score`: the plan and the runs (configs: config.py).

Each selected feature is one job: its calls go through the client (cache, limits, budget) and
its rows are written in one transaction as soon as it is done, so Ctrl-C, a budget reached or a
kill -9 keeps every finished feature, and a rerun skips them.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from monoscope.interpret.backends.base import CallResult, ChatResponse
from monoscope.interpret.config import ExplainConfig, LLMOptions, ScoreConfig
from monoscope.interpret.examples import FeatureExamples, load_features, read_vocab, split_examples
from monoscope.interpret.scorers import make_scorer
from monoscope.interpret.selection import select_features
from monoscope.interpret.session import judge_name, open_client, open_store
from monoscope.interpret.store import (
    explained_ids,
    latest_explanations,
    write_explanation,
    write_score,
)


class PlanningCaller:
    """Stands in for the client during --plan: records each request the explainer or scorer
    would send, answers it with nothing, and prices it through the real client's estimate."""

    def __init__(self, client) -> None:
        self.client, self.backend = client, client.backend
        self.calls = self.cached = self.prompt_tokens = self.completion_tokens = 0
        self.usd: float | None = 0.0

    def call(self, request):
        prompt, completion, usd, cached = self.client.estimate(request)
        self.calls += 1
        if cached:
            self.cached += 1
        else:
            self.prompt_tokens += prompt
            self.completion_tokens += completion
            self.usd = None if usd is None or self.usd is None else self.usd + usd
        return CallResult(ChatResponse("", prompt, 0), "", cached, 0.0, 0.0)

    def summary(self, n_features: int) -> dict[str, Any]:
        return {
            "features": n_features,
            "calls": self.calls,
            "cached_calls": self.cached,
            "prompt_tokens": self.prompt_tokens,
            "max_completion_tokens": self.completion_tokens,
            "estimated_usd": self.usd,
        }


def plan_requests(
    client, features: dict[int, FeatureExamples], job, listed: dict[str, Any]
) -> dict[str, Any]:
    """--plan: run `job(fx, caller)` for every feature against a PlanningCaller, so the plan
    counts exactly the requests the run would send; nothing is sent or written."""
    planner = PlanningCaller(client)
    for fx in features.values():
        job(fx, planner)
    return {"plan": planner.summary(len(features)), **listed}


def _selected(
    conn: sqlite3.Connection, opts: LLMOptions
) -> tuple[dict[int, FeatureExamples], list[int]]:
    """The selected features' examples, and the ids skipped for having none (dead features,
    or a store analysed with no examples)."""
    ids = select_features(conn, opts.features, opts.seed)
    features = load_features(conn, ids, read_vocab(conn))
    skipped = [fid for fid in ids if fid not in features or not features[fid].has_examples]
    return {fid: features[fid] for fid in ids if fid not in skipped}, skipped


def run_explain(cfg: ExplainConfig, lm=None) -> dict[str, Any]:
    """Explain the selected features into the store; returns the run's summary."""
    from monoscope.interpret.calls import run_jobs
    from monoscope.interpret.explainer import explain_feature

    conn = open_store(cfg.db)
    try:
        features, skipped = _selected(conn, cfg)
        explainer = judge_name(cfg)
        n_asked = len(features)
        if not cfg.overwrite:
            done = explained_ids(conn, explainer, cfg.prompt_version)
            features = {f: fx for f, fx in features.items() if f not in done}
        client = open_client(cfg, lm)
        unparsable: list[int] = []

        def write(fx: FeatureExamples, result) -> None:
            write_explanation(conn, fx.feature, explainer, result)
            unparsable.extend([fx.feature] if result.status == "unparsable" else [])

        def explain(fx: FeatureExamples, caller=client):
            return explain_feature(
                caller, fx, with_logits=cfg.with_logits, version=cfg.prompt_version
            )

        if cfg.plan:
            return plan_requests(client, features, explain, {"skipped_no_examples": skipped})
        outcome = run_jobs(
            list(features.values()),
            explain,
            max_concurrency=cfg.max_concurrency,
            on_done=write,
            progress_desc="explain" if cfg.progress else None,
            client=client,
        )
        summary = _summary(outcome, client, skipped, explainer, unparsable)
        summary["already_done"] = n_asked - len(features)
        return summary
    finally:
        conn.close()


def run_score(cfg: ScoreConfig, lm=None) -> dict[str, Any]:
    """Score the selected features' explanations into the store; returns the run's summary."""
    from monoscope.interpret.calls import run_jobs

    conn = open_store(cfg.db)
    try:
        features, skipped = _selected(conn, cfg)
        explained = latest_explanations(conn, list(features), cfg.explainer)
        missing = [fid for fid in features if fid not in explained]
        features = {f: fx for f, fx in features.items() if f in explained}
        scorers, judges = _scorers(cfg, lm)
        n_asked = len(features)
        if not cfg.overwrite:
            wanted = {(s.name, s.version, _judge_of(s.name, cfg, judges)) for s in scorers}
            features = _unscored(conn, features, explained, wanted)
        negatives = _negatives(conn, cfg, features)

        def score(fx: FeatureExamples, caller=judges["llm"]) -> list:
            split = split_examples(fx)
            text = explained[fx.feature]["text"]
            return [
                scorer.score(
                    fx,
                    split,
                    text,
                    judges["embedding"] if scorer.name == "embedding" else caller,
                    rng_seed=cfg.seed,
                    hard_negatives=negatives.get(fx.feature, ()),
                )
                for scorer in scorers
            ]

        if cfg.plan:
            listed = {"skipped_no_examples": skipped, "skipped_no_explanation": missing}
            return plan_requests(judges["llm"], features, score, listed)
        unparsable = []

        def write(fx: FeatureExamples, results: list) -> None:
            for result in results:
                judge = _judge_of(result.scorer, cfg, judges)
                write_score(conn, fx.feature, judge, explained[fx.feature], result)
                unparsable.extend([fx.feature] if result.status == "unparsable" else [])

        outcome = run_jobs(
            list(features.values()),
            score,
            max_concurrency=cfg.max_concurrency,
            on_done=write,
            progress_desc="score" if cfg.progress else None,
            client=judges["llm"],
        )
        summary = _summary(outcome, judges["llm"], skipped, judge_name(cfg), unparsable)
        summary["skipped_no_explanation"] = missing
        summary["already_done"] = n_asked - len(features)
        summary["mean_scores"] = _mean_scores(conn, explained, scorers, cfg, judges)
        return summary
    finally:
        conn.close()


def _scorers(cfg: ScoreConfig, lm) -> tuple[list, dict[str, Any]]:
    """The scorers asked for, and their judges: the LLM client (built even when only the
    embedding scorer runs, so --plan and the summary have one) and the sentence embedder."""
    from monoscope.interpret.embedding import SentenceEmbedder

    names = cfg.scorer_list()
    judges: dict[str, Any] = {"llm": open_client(cfg, lm), "embedding": None}
    if "embedding" in names:
        judges["embedding"] = SentenceEmbedder()
    return [make_scorer(name, **_scorer_options(name, cfg)) for name in names], judges


def _scorer_options(name: str, cfg: ScoreConfig) -> dict[str, Any]:
    """The options of ScoreConfig that scorer `name` takes (0 caps mean none)."""
    options: dict[str, Any] = {"max_activating": cfg.max_activating or None}
    if name != "fuzzing":
        options["max_non_activating"] = cfg.max_non_activating or None
    if name in ("detection", "fuzzing"):
        options["answers"] = cfg.answers
    return options


def _judge_of(scorer: str, cfg: ScoreConfig, judges: dict[str, Any]) -> str:
    if scorer == "embedding":
        return f"embedding:{judges['embedding'].name}"
    return judge_name(cfg)


def _unscored(
    conn: sqlite3.Connection,
    features: dict[int, FeatureExamples],
    explained: dict[int, dict[str, Any]],
    wanted: set[tuple[str, str, str]],
) -> dict[int, FeatureExamples]:
    """Features that lack a (scorer, scorer version, judge) of `wanted` on their current
    explanation."""
    todo = {}
    for fid, fx in features.items():
        row = explained[fid]
        have = set(
            conn.execute(
                "SELECT scorer, scorer_version, judge FROM scores WHERE feature = ? AND "
                "explainer = ? AND prompt_version = ? AND explanation = ?",
                (fid, row["explainer"], row["prompt_version"], row["text"]),
            )
        )
        if wanted - have:
            todo[fid] = fx
    return todo


def _negatives(
    conn: sqlite3.Connection, cfg: ScoreConfig, features: dict[int, FeatureExamples]
) -> dict[int, list]:
    """Verified-silent neighbour windows for detection and embedding, when asked for."""
    from monoscope.analyze.schema import read_meta
    from monoscope.interpret.negatives import WindowEncoder, hard_negatives

    wants = {"detection", "embedding"} & set(cfg.scorer_list())
    if not cfg.hard_negatives or not wants or not features:
        return {}
    encoder = WindowEncoder(read_meta(conn), cfg.db)
    return hard_negatives(conn, features, read_vocab(conn), cfg.hard_negatives, encoder)


def _mean_scores(
    conn: sqlite3.Connection,
    explained: dict[int, dict[str, Any]],
    scorers: list,
    cfg: ScoreConfig,
    judges: dict[str, Any],
) -> dict[str, dict[str, Any]]:
    """Each scorer's mean headline score over the selected features' current explanations
    (scored by this run or an earlier one)."""
    out = {}
    for scorer in scorers:
        values = []
        for fid, row in explained.items():
            found = conn.execute(
                "SELECT score FROM scores WHERE feature = ? AND scorer = ? AND judge = ? AND "
                "explainer = ? AND prompt_version = ? AND explanation = ? AND status = 'ok' "
                "AND scorer_version = ?",
                (
                    fid,
                    scorer.name,
                    _judge_of(scorer.name, cfg, judges),
                    row["explainer"],
                    row["prompt_version"],
                    row["text"],
                    scorer.version,
                ),
            ).fetchone()
            if found is not None and found[0] is not None:
                values.append(found[0])
        if values:
            out[scorer.name] = {
                "score": sum(values) / len(values),
                "n": len(values),
                "chance": scorer.chance,
            }
    return out


def _summary(
    outcome, client, skipped: list[int], judge: str, unparsable: list[int]
) -> dict[str, Any]:
    """The run's outcome and the client's spend, as plain JSON; a run that a backend error
    stopped (a refused key, an unknown model, an endpoint down) raises it once what finished
    is written."""
    from monoscope.interpret.backends.base import BackendError

    if outcome.stop_reason and not outcome.stopped_by_budget and not outcome.done:
        raise BackendError(outcome.stop_reason)
    stats = client.stats
    return {
        "judge": judge,
        "done": len(outcome.done),
        "unparsable": len(unparsable),
        "unparsable_features": unparsable,
        "failed": {item.feature: error for item, error in outcome.failed},
        "not_started": [item.feature for item in outcome.not_done],
        "stopped_by_budget": outcome.stopped_by_budget,
        "stop_reason": outcome.stop_reason,
        "skipped_no_examples": skipped,
        "calls_sent": stats.n_sent,
        "calls_cached": stats.n_cached,
        "prompt_tokens": stats.prompt_tokens,
        "completion_tokens": stats.completion_tokens,
        "spent_usd": stats.spent_usd if client.price is not None else None,
        "backend_s": stats.backend_s,
    }
