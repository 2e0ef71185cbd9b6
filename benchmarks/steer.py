"""Generation speed with SAE steering against without, in the same run (target: steering costs
< 15%, i.e. steered / unsteered tokens/s >= 0.85).

Greedy `generate` with the KV cache on the built-in model, a fixed number of new tokens
(min_new_tokens = max_new_tokens, so every variant produces the same count); variants run
interleaved, best of --repeats. The SAE is --sae, or a random TopK SAE of the demo's shape
(16 x 576 features, k 32, at blocks.15.hook_resid_post): its cost does not depend on training.
Wall time and process CPU time are both reported: on a shared machine, CPU time with
--threads 1 is the steadier measure of the work (no threads spinning while they wait).

    python benchmarks/steer.py [--sae runs/demo/sae] [--tokens 64] [--batch 1] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch

from monoscope.models import load_model
from monoscope.runtime import configure_threads
from monoscope.sae import SAEConfig, build_sae, load_sae
from monoscope.steer import FeatureEdit, SteeringSpec, encode_prompt, steering

PROMPT = "The history of the city begins with a small fishing village on the river, where"


def variants() -> dict[str, SteeringSpec | None]:
    several = tuple(FeatureEdit(100 + 37 * i, "clamp", 5.0) for i in range(6))
    several += (FeatureEdit(7, "add", 20.0), FeatureEdit(9, "ablate"))
    return {
        "unsteered": None,
        "clamp 1 feature": SteeringSpec((FeatureEdit(1234, "clamp", 10.0),)),
        "8 features (clamp, add, ablate)": SteeringSpec(several),
        "clamp 1 feature, generated only": SteeringSpec(
            (FeatureEdit(1234, "clamp", 10.0, positions="generated"),)
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sae", default=None, help="SAE folder (default: a random TopK SAE)")
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per generate")
    parser.add_argument("--batch", type=int, default=1, help="sequences per generate")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="default: every core")
    args = parser.parse_args()
    threads = configure_threads(args.threads)
    lm = load_model("smollm2-135m", device="cpu")
    if args.sae:
        sae = load_sae(args.sae)
    else:
        cfg = SAEConfig("topk", 576, 16 * 576, k=32, site="blocks.15.hook_resid_post")
        sae = build_sae(cfg).eval()
        sae.cfg.model, sae.cfg.input_scale = lm.name, 0.138  # the demo SAE's scale
    ids = encode_prompt(lm, PROMPT).repeat(args.batch, 1)
    options = dict(
        max_new_tokens=args.tokens,
        min_new_tokens=args.tokens,
        do_sample=False,
        pad_token_id=lm.tokenizer.eos_token_id,
        use_cache=True,
    )

    def run(spec: SteeringSpec | None) -> tuple[float, float]:
        """(wall seconds, process CPU seconds) of one generate."""
        wall, cpu = time.perf_counter(), time.process_time()
        with torch.no_grad():
            if spec is None:
                lm.model.generate(ids, attention_mask=torch.ones_like(ids), **options)
            else:
                with steering(lm, {"sae": sae}, spec):
                    lm.model.generate(ids, attention_mask=torch.ones_like(ids), **options)
        return time.perf_counter() - wall, time.process_time() - cpu

    specs = variants()
    run(None)  # warm-up
    best = {name: [float("inf"), float("inf")] for name in specs}
    for _ in range(args.repeats):
        for name, spec in specs.items():
            best[name] = [min(b, t) for b, t in zip(best[name], run(spec), strict=True)]
    new = args.tokens * args.batch
    print(
        f"smollm2-135m, {threads} thread(s), prompt {ids.shape[1]} tokens, batch {args.batch}, "
        f"{args.tokens} new tokens, SAE {sae.cfg.n_features} features (k {sae.cfg.k}) at "
        f"{sae.cfg.site}; best of {args.repeats}"
    )
    wall0, cpu0 = best["unsteered"]
    print(
        f"{'variant':<34} {'wall s':>8} {'tokens/s':>9} {'vs unsteered':>13} {'CPU s':>8} {'vs':>7}"
    )
    for name, (wall, cpu) in best.items():
        print(
            f"{name:<34} {wall:>8.3f} {new / wall:>9.1f} {wall0 / wall:>12.3f}x "
            f"{cpu:>8.3f} {cpu0 / cpu:>6.3f}x"
        )
    worst_wall = max(w for w, _ in best.values()) / wall0 - 1
    worst_cpu = max(c for _, c in best.values()) / cpu0 - 1
    print(f"largest steering cost: {worst_wall:.1%} wall, {worst_cpu:.1%} CPU time (target < 15%)")


if __name__ == "__main__":
    main()
