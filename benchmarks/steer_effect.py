"""Does clamping a feature raise the probability of the tokens it writes towards? (METHODS §6)

Picks features of a trained residual-stream SAE whose top direct-logit tokens are clear: alive
in a sample of the activation store (firing on at least --min-density of its tokens), top
--top-tokens tokens all alphabetic words of three or more letters, ranked by how far the top
token's effect stands out of the vocabulary's (z-score). Each is clamped at every position
(BOS excepted) to 0, 1, 2, 5, 10 x its max activation on neutral prompts, --n samples each, and
we report, over the generated positions, the probability the steered model puts on those
tokens (baseline: the unsteered model on its own continuations), how often they appear, the
KL from the unsteered model and the steered text's perplexity under the unsteered model.

    python benchmarks/steer_effect.py --sae runs/demo/sae --acts runs/demo/acts
"""

from __future__ import annotations

import argparse
import time

import torch

from monoscope.analyze.logits import direct_map
from monoscope.artifacts import atomic_write_json
from monoscope.models import load_model
from monoscope.runtime import configure_threads
from monoscope.sae import load_sae
from monoscope.steer import (
    FeatureEdit,
    Sampling,
    SteeringSpec,
    compare,
    decoder_directions,
    from_activation_store,
)
from monoscope.steer.prompts import token_texts

PROMPTS = [
    "I think that",
    "Once upon a time",
    "The best thing about today is",
    "Let me tell you about",
    "Here is what happened next:",
    "My favourite thing is",
    "In the morning, I",
    "She said that the",
    "The most important question is",
    "Yesterday we went to",
]


def density(sae, acts: str, tokens: int) -> torch.Tensor:
    """Fraction of the first `tokens` train-split tokens on which each feature fires."""
    from monoscope.harvest import ActivationStore

    store = ActivationStore(acts)
    fired, seen = torch.zeros(sae.cfg.n_features), 0
    max_norm = sae.cfg.training.get("max_norm")
    with torch.no_grad():
        for rows, _ in store.rows(sae.cfg.site, "train", max_norm=max_norm):
            for x in rows[: tokens - seen].split(4096):
                fired += (sae.encode(x.float()) > 0).sum(0)
                seen += x.shape[0]
            if seen >= tokens:
                break
    return fired / seen


def clear_features(lm, sae, alive: torch.Tensor, n: int, k: int) -> list[tuple[int, list[str]]]:
    """(feature, top k token texts) of the n alive features with the clearest top tokens."""
    weight, centre, unembed = direct_map(lm)
    texts = token_texts(lm, range(unembed.shape[0]))
    candidates = []
    ids = alive.nonzero().flatten()
    for block in ids.split(512):
        d = decoder_directions(sae, block).cpu()
        d = d / d.norm(dim=-1, keepdim=True)
        if centre:
            d = d - d.mean(-1, keepdim=True)
        effects = (d * weight) @ unembed.T  # [b, vocab]
        z = (effects.max(-1).values - effects.mean(-1)) / effects.std(-1)
        top = effects.topk(k, dim=-1).indices
        for feature, score, tokens in zip(block.tolist(), z.tolist(), top.tolist(), strict=True):
            words = [texts[t] for t in tokens]
            if all(w.strip().isalpha() and len(w.strip()) >= 3 for w in words):
                candidates.append((score, feature, words))
    candidates.sort(reverse=True)
    return [(feature, words) for _, feature, words in candidates[:n]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sae", default="runs/demo/sae")
    parser.add_argument("--acts", default="runs/demo/acts")
    parser.add_argument("--features", default="", help="comma-separated ids (default: picked)")
    parser.add_argument("--n-features", type=int, default=5)
    parser.add_argument("--top-tokens", type=int, default=5)
    parser.add_argument("--min-density", type=float, default=1e-4)
    parser.add_argument("--strengths", default="0,1,2,5,10")
    parser.add_argument("--prompts", type=int, default=5, help="how many of PROMPTS")
    parser.add_argument("--n", type=int, default=6, help="samples per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--sample-tokens", type=int, default=65_536)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    configure_threads()
    start = time.perf_counter()
    sae = load_sae(args.sae)
    lm = load_model(sae.cfg.model, device="cpu")
    maxes = from_activation_store(args.acts, sae, args.sample_tokens)
    if args.features:
        chosen = [(int(f), None) for f in args.features.split(",")]
    else:
        alive = density(sae, args.acts, args.sample_tokens) >= args.min_density
        chosen = clear_features(lm, sae, alive, args.n_features, args.top_tokens)
    strengths = [float(s) for s in args.strengths.split(",")]
    sampling = Sampling(args.max_new_tokens, args.temperature, 0, args.n)
    print(f"max activations from {maxes.source}; sampling {sampling}")
    rows, examples = [], []
    for feature, words in chosen:
        specs = [
            SteeringSpec((FeatureEdit(feature, "clamp", s, relative=True),)) for s in strengths
        ]
        per_strength = [[] for _ in strengths]
        for prompt in PROMPTS[: args.prompts]:
            result = compare(
                lm, {"sae": sae}, specs, prompt, sampling, {"sae": maxes}, top_tokens=5
            )
            for bucket, run in zip(per_strength, result["runs"], strict=True):
                bucket.append((result, run))
            example = {"feature": feature, "prompt": prompt}
            example["baseline"] = result["baseline"][0]["text"]
            for s, r in zip(strengths, result["runs"], strict=True):
                example[f"{s:g}x"] = r["samples"][0]["text"]
            examples.append(example)
        words = words or [t["text"] for t in per_strength[0][0][1]["token_effects"][0]["tokens"]]
        baseline = [r["token_effects"][0]["mass_baseline"] for _, r in per_strength[0]]
        base_count = sum(r["token_effects"][0]["count_baseline"] for _, r in per_strength[0])
        base_tokens = sum(len(b["tokens"]) for res, _ in per_strength[0] for b in res["baseline"])
        rows.append(
            {
                "feature": feature,
                "max_act": maxes.of(feature),
                "tokens": words,
                "strength": "unsteered",
                "probability": sum(baseline) / len(baseline),
                "per_1k_tokens": 1000 * base_count / base_tokens,
            }
        )
        for s, runs in zip(strengths, per_strength, strict=True):
            samples = [x for _, r in runs for x in r["samples"]]
            n_tokens = sum(len(x["tokens"]) for x in samples)
            effects = [r["token_effects"][0] for _, r in runs]
            rows.append(
                {
                    "feature": feature,
                    "strength": f"{s:g}x",
                    "probability": sum(e["mass_steered"] for e in effects) / len(effects),
                    "per_1k_tokens": 1000 * sum(e["count_steered"] for e in effects) / n_tokens,
                    "kl": sum(x["kl_mean_generated"] for x in samples) / len(samples),
                    "perplexity_unsteered": sorted(x["perplexity_unsteered"] for x in samples)[
                        len(samples) // 2
                    ],
                }
            )
        print_feature(rows[-len(strengths) - 1 :])
        if args.json:  # after every feature: a long run stopped early keeps what it measured
            atomic_write_json(
                args.json, {"rows": rows, "examples": examples, "max_source": maxes.source}
            )
    print(f"{time.perf_counter() - start:.0f} s")


def print_feature(rows: list[dict]) -> None:
    head = rows[0]
    print(f"\nfeature {head['feature']} (max {head['max_act']:.3g}): {head['tokens']}")
    print(f"{'strength':>10} {'P(tokens)':>10} {'per 1k':>8} {'KL':>8} {'ppl (unsteered)':>16}")
    for r in rows:
        kl = f"{r['kl']:.3f}" if "kl" in r else "-"
        ppl = f"{r['perplexity_unsteered']:.1f}" if "perplexity_unsteered" in r else "-"
        print(
            f"{r['strength']:>10} {r['probability']:>10.4f} {r['per_1k_tokens']:>8.1f} "
            f"{kl:>8} {ppl:>16}"
        )


if __name__ == "__main__":
    main()
