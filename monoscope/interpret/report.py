"""Plain-text summaries the interpret commands print."""

from __future__ import annotations

from typing import Any


def _ids(ids: list[int], limit: int = 12) -> str:
    shown = ", ".join(map(str, ids[:limit]))
    return shown + (f" … (+{len(ids) - limit})" if len(ids) > limit else "")


def _cost(usd: float | None) -> str:
    return "cost unknown (no price for this model: --prices)" if usd is None else f"${usd:.4f}"


def format_plan(command: str, plan: dict[str, Any]) -> str:
    usd = plan["estimated_usd"]
    cost = "unknown (no price for this model: pass --prices)" if usd is None else f"${usd:.4f}"
    return (
        f"{command} plan: {plan['features']} feature(s), {plan['calls']} call(s) "
        f"({plan['cached_calls']} already cached), {plan['prompt_tokens']:,} prompt tokens, "
        f"at most {plan['max_completion_tokens']:,} completion tokens; estimated cost {cost}. "
        "Nothing was sent."
    )


def format_run(command: str, summary: dict[str, Any]) -> str:
    """The summary of `run_explain` / `run_score` as a few lines."""
    lines = []
    if "plan" in summary:
        lines.append(format_plan(command, summary["plan"]))
    else:
        lines.append(
            f"{command}: {summary['done']} feature(s) done by {summary['judge']}"
            + (f", {summary['unparsable']} answer(s) unparsable" if summary["unparsable"] else "")
            + f"; {summary['calls_sent']} call(s) sent, {summary['calls_cached']} from the cache, "
            f"{summary['prompt_tokens']:,} + {summary['completion_tokens']:,} tokens, "
            + _cost(summary["spent_usd"])
        )
        for name, mean in summary.get("mean_scores", {}).items():
            lines.append(
                f"  {name}: mean {mean['score']:.3f} over {mean['n']} (chance {mean['chance']})"
            )
        if summary["stopped_by_budget"]:
            lines.append(
                f"  stopped at the budget: {len(summary['not_started'])} feature(s) left "
                f"({_ids(summary['not_started'])}); raise --budget-usd and rerun to go on"
            )
        if summary["stop_reason"] and not summary["stopped_by_budget"]:
            lines.append(f"  stopped early: {summary['stop_reason']}")
        for fid, error in list(summary["failed"].items())[:5]:
            lines.append(f"  feature {fid} failed: {error}")
    for key, why in (
        ("skipped_no_examples", "no examples"),
        ("skipped_no_explanation", "no explanation"),
    ):
        if summary.get(key):
            lines.append(f"  skipped ({why}): {_ids(summary[key])}")
    if summary.get("already_done"):
        lines.append(f"  already done (--overwrite redoes them): {summary['already_done']}")
    return "\n".join(lines)


def format_specificity(report: dict[str, Any]) -> str:
    """The pooled rubric grades per activation interval, as a small table."""
    if "plan" in report:
        text = format_plan("specificity", report["plan"])
        return text + (f"\n  skipped: {len(report['skipped'])}" if report["skipped"] else "")
    pooled = report["pooled"]
    lines = [
        f"specificity of {len(report['features'])} feature(s) judged by {report['judge']} "
        f"({report['prompt_version']}); grades 0-3 per activation interval:",
        f"  {'interval':>12}  {'n':>5}  " + " ".join(f"{g:>4}" for g in "0123") + "   mean"
        "  unparsable",
    ]
    for label, row in pooled["intervals"].items():
        mean = "-" if row["mean"] is None else f"{row['mean']:.2f}"
        counts = " ".join(f"{c:>4}" for c in row["counts"])
        lines.append(f"  {label:>12}  {row['n']:>5}  {counts}  {mean:>5}  {row['n_unparsable']}")
    if pooled["n_unparsable"]:
        lines.append(
            f"  {pooled['n_unparsable']} answer(s) were not a grade (kept, with the raw text)"
        )
    run = report.get("run", {})
    if run.get("stop_reason"):
        lines.append(f"  stopped early: {run['stop_reason']} ({len(run['not_done'])} not done)")
    if report["skipped"]:
        lines.append(f"  skipped: {len(report['skipped'])} feature(s) (see the report)")
    lines.append(f"  report: {report['out']}")
    return "\n".join(lines)


def _side_by_side(name: str, entry: dict[str, Any]) -> str:
    features, neurons = entry["features"], entry["neurons"]

    def mean(side: dict[str, Any]) -> str:
        return "-" if side["mean"] is None else f"{side['mean']:.3f}"

    beat = entry.get("p_features_beat_neurons")
    test = "" if beat is None else f"; P(feature > neuron) {beat:.2f}, p {entry['p_value']:.2g}"
    return (
        f"  {name}: features {mean(features)} (n {features['n']}), neurons {mean(neurons)} "
        f"(n {neurons['n']}){test}"
    )


def format_comparison(report: dict[str, Any]) -> str:
    """Features vs neurons: the correlation result, then the scores side by side."""
    corr = report["correlation"]
    lines = [
        f"features vs neurons over {corr['tokens']:,} tokens: {corr['n_sampled']} random features, "
        f"max |r| with any MLP neuron of layers {corr['layers'][0]}-{corr['layers'][-1]}: "
        f"median {corr['median_max_r']:.3f}; {100 * corr['fraction_at_most_threshold']:.1f}% "
        f"have max r <= {corr['threshold']} (Scaling Monosemanticity: "
        f"{100 * corr['paper_fraction']:.0f}%)"
    ]
    for name, entry in report.get("scores", {}).items():
        lines.append(_side_by_side(name, entry))
    if report.get("specificity"):
        lines.append(
            _side_by_side("specificity (mean grade of firing windows)", report["specificity"])
        )
    lines.extend(f"  note: {line}" for line in report.get("missing", []))
    lines.append(f"  report: {report['config']['out']}")
    return "\n".join(line for line in lines if line)
