"""The interpret stage on a real feature store with the local backend (the built-in model as
explainer and judge): throughput, the replay of a cached run, the harness's overhead, and the
scores of its explanations against two baselines scored in the same run.

1. explain N random features that fired, then score them (detection with hard negatives,
   embedding): features per minute; the harness overhead, (wall - the backend's own time) /
   the backend's time, for the explain and the detection runs;
2. the same commands on a fresh copy of the store with --replay-only: everything from the
   cache (target: >= 50x faster than the first run's explain + detection);
3. baselines scored by the same judge on the same held-out windows: the explanations shuffled
   across the features, and each feature's top activating token as its explanation.

The store is copied into a temporary folder (the original is not touched); the model is loaded
once, outside every timing.

    python benchmarks/interpret.py [--db runs/demo/features.db] [--features 20] [--max-windows 10]
        [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sqlite3
import tempfile
import time
from collections import Counter
from pathlib import Path

from monoscope.interpret.commands import ExplainConfig, ScoreConfig, run_explain, run_score
from monoscope.interpret.examples import load_features, read_vocab
from monoscope.interpret.store import now
from monoscope.models import load_model
from monoscope.runtime import configure_threads


def timed(fn, *args, **kw):
    start = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - start


def overhead(summary: dict, wall: float) -> float:
    return (wall - summary["backend_s"]) / summary["backend_s"]


def options(db: Path, n: int, cache: Path, caps: dict) -> tuple[dict, dict]:
    """The explain options and the score options of one run."""
    common = {"db": str(db), "features": f"random:{n}", "cache": str(cache), "progress": False}
    # One call at a time, as the local backend runs them anyway: a call's latency is then the
    # backend's own time, not time queued behind another thread's generation.
    common["max_concurrency"] = 1
    return common, {**common, **caps}


def first_run(db: Path, lm, n: int, cache: Path, caps: dict) -> dict:
    common, scoring = options(db, n, cache, caps)
    explain, t_explain = timed(run_explain, ExplainConfig(**common), lm=lm)
    detect, t_detect = timed(run_score, ScoreConfig(**scoring, scorers="detection"), lm=lm)
    embed, t_embed = timed(run_score, ScoreConfig(**scoring, scorers="embedding"), lm=lm)
    return {
        "features": explain["done"],
        "unparsable_explanations": explain["unparsable"],
        "explain_s": t_explain,
        "detection_s": t_detect,
        "embedding_s": t_embed,
        "explain_calls": explain["calls_sent"],
        "detection_calls": detect["calls_sent"],
        "features_per_minute_explained": 60 * explain["done"] / t_explain,
        "features_per_minute_explained_and_scored": 60
        * explain["done"]
        / (t_explain + t_detect + t_embed),
        "overhead_explain": overhead(explain, t_explain),
        "overhead_detection": overhead(detect, t_detect),
        "scores": {**detect["mean_scores"], **embed["mean_scores"]},
    }


def replay(db: Path, lm, n: int, cache: Path, caps: dict) -> dict:
    common, scoring = options(db, n, cache, {**caps, "replay_only": True})
    common["replay_only"] = True
    explain, t_explain = timed(run_explain, ExplainConfig(**common), lm=lm)
    detect, t_detect = timed(run_score, ScoreConfig(**scoring, scorers="detection"), lm=lm)
    assert explain["calls_sent"] == detect["calls_sent"] == 0, "the replay sent calls"
    return {"explain_s": t_explain, "detection_s": t_detect, "features": explain["done"]}


def add_baselines(db: Path, seed: int) -> None:
    """Explanations 'baseline:shuffled' (the local ones, each given to another feature: a
    random cyclic shift) and 'baseline:top-token' (the token at the centre of most of the
    feature's top examples)."""
    conn = sqlite3.connect(db)
    rows = conn.execute(
        "SELECT feature, prompt_version, explanation FROM explanations WHERE status = 'ok'"
    ).fetchall()
    features = load_features(conn, [r[0] for r in rows], read_vocab(conn))
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    shuffled = {order[i]: rows[order[(i + 1) % len(rows)]][2] for i in range(len(rows))}
    with conn:
        for i, (fid, version, _) in enumerate(rows):
            top = Counter(e.tokens[e.centre] for e in features[fid].top).most_common(1)
            token = top[0][0].strip() or repr(top[0][0])
            for name, text in (("shuffled", shuffled[i]), ("top-token", token)):
                conn.execute(
                    "INSERT OR REPLACE INTO explanations VALUES (?,?,?,?,?,?,?,?,?)",
                    (fid, f"baseline:{name}", version, "ok", text, text, "[]", "[]", now()),
                )
    conn.close()


def baselines(db: Path, lm, n: int, cache: Path, caps: dict, seed: int) -> dict:
    add_baselines(db, seed)
    _, scoring = options(db, n, cache, caps)
    out = {}
    for name in ("local:smollm2-135m", "baseline:shuffled", "baseline:top-token"):
        cfg = ScoreConfig(**scoring, scorers="detection,embedding", explainer=name)
        out[name] = run_score(cfg, lm=lm)["mean_scores"]
        out[name]["detection_auc"] = mean_auc(db, name)
    return out


def mean_auc(db: Path, explainer: str) -> dict:
    """Detection's AUROC from the judge's p(yes) per window (logprobs answers), averaged over
    the features: threshold-free, where the balanced accuracy needs the judge's 0/1 to vary."""
    conn = sqlite3.connect(db)
    rows = conn.execute(
        "SELECT metrics FROM scores WHERE scorer = 'detection' AND explainer = ? AND status = 'ok'",
        (explainer,),
    )
    aucs = [m["auc"] for (text,) in rows if (m := json.loads(text)).get("auc") is not None]
    conn.close()
    return {"score": sum(aucs) / len(aucs) if aucs else float("nan"), "n": len(aucs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default="runs/demo/features.db")
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--max-windows",
        type=int,
        default=10,
        help="held-out activating and non-activating windows per feature (each; 0: all)",
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    configure_threads(args.threads)
    lm = load_model("smollm2-135m")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name in ("first", "replay"):
            (root / name).mkdir()
            shutil.copy(args.db, root / name / "features.db")
        cache = root / "llm_cache.sqlite"
        caps = {"max_activating": args.max_windows, "max_non_activating": args.max_windows}
        first = first_run(root / "first" / "features.db", lm, args.features, cache, caps)
        again = replay(root / "replay" / "features.db", lm, args.features, cache, caps)
        compared = baselines(
            root / "first" / "features.db", lm, args.features, cache, caps, args.seed
        )
    speedup = (first["explain_s"] + first["detection_s"]) / (
        again["explain_s"] + again["detection_s"]
    )
    report = {"first": first, "replay": again, "replay_speedup": speedup, "baselines": compared}
    print(json.dumps(report, indent=1))
    print(
        f"explained {first['features']} features: {first['features_per_minute_explained']:.1f}/min "
        f"explained, {first['features_per_minute_explained_and_scored']:.2f}/min explained and "
        f"scored; replay {speedup:.0f}x faster (target >= 50x); harness overhead explain "
        f"{100 * first['overhead_explain']:.1f}%, detection "
        f"{100 * first['overhead_detection']:.1f}% (target < 10%)"
    )
    for name, scores in compared.items():
        parts = ", ".join(f"{s} {v['score']:.3f} (n {v['n']})" for s, v in scores.items())
        print(f"  {name}: {parts}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
