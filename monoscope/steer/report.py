"""Plain-text reports of the steering, attribution and feature-search results (their JSON)."""

from __future__ import annotations

import itertools
import shutil
import textwrap


def _width() -> int:
    return max(60, min(shutil.get_terminal_size((100, 24)).columns, 140))


def _side_by_side(left: list[str], right: list[str], width: int) -> list[str]:
    column = (width - 3) // 2
    lines_l = [w for line in left for w in (textwrap.wrap(line, column) or [""])]
    lines_r = [w for line in right for w in (textwrap.wrap(line, column) or [""])]
    pairs = itertools.zip_longest(lines_l, lines_r, fillvalue="")
    return [f"{a:<{column}} │ {b}" for a, b in pairs]


def _edits(run: dict) -> str:
    parts = []
    for e in run["edits"]:
        value = "" if e["mode"] == "ablate" else f" {e['value']:g}{'x' if e['relative'] else ''}"
        exact = f" (= {e['absolute_value']:.4g})" if e["relative"] else ""
        where = "" if e["positions"] == "all" else f" at {e['positions']} positions"
        parts.append(f"{e['mode']} {e['feature']}{value}{exact}{where}")
    return "; ".join(parts)


def _run_summary(sample: dict) -> str:
    achieved = ", ".join(
        f"f{a['feature']} {a['mean_after']:.3g}" for a in sample["achieved"] if a["mean_after"]
    )
    text = (
        f"perplexity {sample['perplexity_unsteered']:.4g} under the unsteered model; "
        f"KL(steered||unsteered) {sample['kl_mean_generated']:.3g} per generated token"
    )
    return text + (f"; activation after steering (mean): {achieved}" if achieved else "")


def _token_effects(run: dict) -> list[str]:
    lines = []
    for effect in run["token_effects"]:
        tokens = ", ".join(f"{t['text']!r} {t['logprob_shift']:+.2f}" for t in effect["tokens"])
        lines.append(
            f"  feature {effect['feature']}: top logit tokens (log-prob shift) {tokens}; "
            f"their probability {effect['mass_baseline']:.3g} -> {effect['mass_steered']:.3g}, "
            f"count {effect['count_baseline']} -> {effect['count_steered']}"
        )
    return lines


def format_steer(result: dict) -> str:
    width = _width()
    s = result["sampling"]
    sampling = "greedy" if s["temperature"] == 0 else f"temperature {s['temperature']:g}"
    lines = [
        f"prompt ({len(result['prompt_tokens'])} tokens): {result['prompt']!r}",
        f"{sampling}, seed {s['seed']}, {s['max_new_tokens']} new tokens, "
        f"{s['n']} sample(s) per run",
    ]
    if result["max_source"]:
        lines.append(f"max activations from {result['max_source']}")
    runs = result["runs"]
    for run in runs:
        label = f"[{run['label']}] " if run["label"] else ""
        lines.append(f"steering {label}{_edits(run)}")
    for j, base in enumerate(result["baseline"]):
        lines.append(f"── sample {j + 1} " + "─" * (width - 12))
        if len(runs) == 1:
            steered = runs[0]["samples"][j]
            left = ["unsteered:", base["text"], f"perplexity {base['perplexity_unsteered']:.4g}"]
            lines += _side_by_side(
                left, ["steered:", steered["text"], _run_summary(steered)], width
            )
            continue
        lines += textwrap.wrap(f"unsteered: {base['text']}", width)
        for run in runs:
            steered = run["samples"][j]
            lines += textwrap.wrap(f"[{run['label']}] {steered['text']}", width)
            lines += textwrap.wrap(f"    {_run_summary(steered)}", width, subsequent_indent="    ")
    for run in runs:
        if run["token_effects"]:
            label = f" [{run['label']}]" if run["label"] else ""
            lines.append(f"direct logit effects{label}")
            lines += _token_effects(run)
    return "\n".join(lines)


def _num(value: float | None, spec: str = ".4g") -> str:
    return "-" if value is None else format(value, spec)


def format_attribution(result: dict) -> str:
    target, metric = result["target"], result["metric"]
    kind = metric["kind"]
    if metric["contrast"]:
        kind += f" against {metric['contrast']['text']!r}"
    source = "the model's top token" if target["source"] == "model" else "given"
    lines = [
        f"prompt ({len(result['tokens'])} tokens): {result['prompt']!r}",
        f"target {target['text']!r} ({source}), p = {result['probability']:.4g}; "
        f"metric {kind} = {metric['value']:.4g}; SAE at {result['site']}, "
        f"{result['active_pairs']} active (feature, position) pairs",
        "attribution = activation x d(metric)/d(activation); ablation = metric(clean) - "
        "metric(feature zeroed at that position), error term kept",
        f"{'rank':>4} {'feature':>8} {'pos':>4} {'token':<14} {'activation':>11} "
        f"{'attribution':>12} {'ablation':>10}",
    ]
    for rank, row in enumerate(result["rows"], 1):
        lines.append(
            f"{rank:>4} {row['feature']:>8} {row['position']:>4} {row['token']!r:<14.14} "
            f"{row['activation']:>11.4g} {row['attribution']:>+12.4g} "
            f"{_num(row['ablation'], '+.4g'):>10}"
        )
    c = result["correlation"]
    if c["pairs"]:
        lines.append(
            f"Spearman over the {c['pairs']} ablated pairs: attribution vs ablation "
            f"{_num(c['attribution_vs_ablation'], '.3f')}, activation vs ablation "
            f"{_num(c['activation_vs_ablation'], '.3f')}"
        )
    return "\n".join(lines)


def format_features(result: dict) -> str:
    if result["kind"] == "span":
        span = result["span"]
        lines = [
            f"features most active on {span['text']!r} (tokens {span['positions']}) of "
            f"{result['prompt']!r}",
            f"{'feature':>8} {'mean':>9} {'max':>9} {'fired':>6} {'mean elsewhere':>15}",
        ]
        for f in result["features"]:
            lines.append(
                f"{f['feature']:>8} {f['mean']:>9.4g} {f['max']:>9.4g} "
                f"{f['fired']:>3}/{len(span['positions']):<2} {f['mean_outside']:>15.4g}"
            )
        return "\n".join(lines)
    n_pos, n_neg = result["n_positive"], result["n_negative"]
    lines = [
        f"features separating {n_pos} positive from {n_neg} negative prompts "
        f"(each prompt scored by the {result['reduce']} over its tokens)",
        f"{'feature':>8} {'difference':>11} {'positive':>9} {'negative':>9} "
        f"{'fired +':>8} {'fired -':>8} {'AUROC':>6}",
    ]
    for f in result["features"]:
        lines.append(
            f"{f['feature']:>8} {f['difference']:>11.4g} {f['mean_positive']:>9.4g} "
            f"{f['mean_negative']:>9.4g} {f['fired_positive']:>4}/{n_pos:<3} "
            f"{f['fired_negative']:>4}/{n_neg:<3} {f['auroc']:>6.3f}"
        )
    return "\n".join(lines)
