"""`monoscope demo`: the pipeline on the built-in model and corpus, end to end.

For now: harvest a middle-layer residual stream of SmolLM2-135M on the built-in corpus, read
the store back, and print what was stored. Later stages (train, evaluate) extend it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from monoscope.harvest import ActivationStore, HarvestConfig
from monoscope.harvest import run as run_harvest


@dataclass
class DemoConfig:
    out: str = "runs/demo"
    """Run folder: the activation store goes to OUT/acts."""
    tokens: int = 200_000
    """Tokens to harvest."""
    site: str = "blocks.15.hook_resid_post"
    """Site to harvest (the middle of SmolLM2-135M's 30 layers)."""
    model_dtype: str = "float32"
    """Model compute dtype (bfloat16 is about twice as fast on recent CPUs)."""
    overwrite: bool = False
    """Start over instead of resuming or reusing what OUT holds."""


def run(cfg: DemoConfig) -> ActivationStore:
    acts_dir = Path(cfg.out) / "acts"
    print(f"[1/1] harvest {cfg.tokens:,} tokens of {cfg.site} from smollm2-135m -> {acts_dir}")
    store = run_harvest(
        HarvestConfig(
            model="smollm2-135m",
            sites=[cfg.site],
            corpus="builtin",
            tokens=cfg.tokens,
            out=str(acts_dir),
            dtype="bfloat16",
            model_dtype=cfg.model_dtype,
            overwrite=cfg.overwrite,
        )
    )
    store.verify()
    batch = next(store.batches(batch_size=4096, split="heldout"))
    m = store.manifest
    print(
        f"store: {store.n_tokens:,} tokens in {len(store.shards)} shard(s), dtype {m['dtype']}, "
        f"d {store.d()}, mean |x| {store.mean_norm():.2f}, harvest {m.get('seconds', 0):.0f} s"
    )
    print(f"read back a held-out batch {tuple(batch.shape)}; every shard's sha256 verified")
    return store
