"""Tiny random models and tokenizers for tests and for users' own experiments.

Everything here is built locally in well under a second: no hub, no download.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

TINY_FAMILIES = ("llama", "mistral", "qwen2", "gpt2", "gpt_neox")


def tiny_tokenizer(bos: bool = True, eos: bool = True):
    """Byte-level tokenizer with no merges: one token per UTF-8 byte (ids 0..255), so any text
    encodes and token counts are predictable; <bos> is 256 and <eos> 257 when asked for."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<bos>", "<eos>"])
    specials = {"bos_token": "<bos>"} if bos else {}
    if eos:
        specials["eos_token"] = "<eos>"
    return PreTrainedTokenizerFast(tokenizer_object=tok, **specials)


TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)
"""A chat template for the tiny tokenizer, so a tiny model can stand in for a chat LLM."""


def tiny_config(family: str, vocab_size: int, n_layers: int = 3, d_model: int = 32):
    """A transformers config of `family` with a few layers of width d_model."""
    from transformers import (
        GPT2Config,
        GPTNeoXConfig,
        LlamaConfig,
        MistralConfig,
        Qwen2Config,
    )

    # Any: each transformers config types its keyword arguments one by one.
    common: dict[str, Any] = {"vocab_size": vocab_size, "bos_token_id": 256, "eos_token_id": 257}
    llama_like: dict[str, Any] = dict(
        hidden_size=d_model,
        intermediate_size=2 * d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        **common,
    )
    if family == "llama":
        return LlamaConfig(**llama_like)
    if family == "mistral":
        return MistralConfig(**llama_like)
    if family == "qwen2":
        return Qwen2Config(**llama_like)
    if family == "gpt2":
        return GPT2Config(n_embd=d_model, n_layer=n_layers, n_head=4, n_positions=256, **common)
    if family == "gpt_neox":
        return GPTNeoXConfig(
            hidden_size=d_model,
            intermediate_size=2 * d_model,
            num_hidden_layers=n_layers,
            num_attention_heads=4,
            max_position_embeddings=256,
            **common,
        )
    raise ValueError(f"unknown tiny family {family!r}; choose from {TINY_FAMILIES}")


def save_tiny_model(folder: str | Path, family: str = "llama", seed: int = 0, **config) -> Path:
    """Build a random tiny causal LM with its tokenizer and save it where `load_model` reads it."""
    from transformers import AutoModelForCausalLM

    folder = Path(folder)
    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, len(tokenizer), **config))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_sae(lm, site: str, arch: str = "topk", expansion: int = 4, k: int = 4, seed: int = 0):
    """A random SAE of `arch` for `site` of `lm` (expansion x width features), named for that
    model and site, with its input scale (and b_dec, threshold) set from the model's activations
    on a short text, so its features fire at realistic sizes."""
    from monoscope.sae import SAEConfig, build_sae

    ids = lm.tokenizer("The model reads a token and writes features.", return_tensors="pt")
    x = lm.capture(ids.input_ids, [site])[site][0]  # [pos, width]
    width = x.shape[-1]
    cfg = SAEConfig(
        arch=arch,
        d_in=width,
        n_features=expansion * width,
        k=k if arch in ("topk", "batchtopk") else None,
        input_scale=width**0.5 / float(x.norm(dim=-1).mean()),
        site=site,
        model=lm.name,
        batchtopk_threshold=0.0 if arch == "batchtopk" else None,
    )
    sae = build_sae(cfg, seed=seed)
    if arch in ("topk", "batchtopk"):
        sae.init_b_dec(x)
    return sae.eval()


def random_feature_store(
    path: str | Path,
    n_features: int = 64,
    vocab: list[str] | None = None,
    n_tokens: int = 100_000,
    top_n: int = 20,
    n_quantiles: int = 10,
    quantile_examples: int = 2,
    window: int = 16,
    n_neighbours: int = 8,
    explanations: dict[int, str] | None = None,
    meta: dict | None = None,
    seed: int = 0,
) -> Path:
    """Write a schema-conformant feature store (monoscope/analyze/schema.py) of random but
    plausible contents: densities log-uniform in [1e-5, 0.1], examples drawn from `vocab`,
    clustered map points. For tests and the server benchmark; `meta` entries override the
    defaults (e.g. "sae", "model", "complete")."""
    import numpy as np

    from monoscope.analyze import schema

    rng = np.random.default_rng(seed)
    vocab = vocab or ["<bos>", "\n", *(f" w{i}" for i in range(510))]
    edges = np.logspace(-2, 2, 41)
    density = 10 ** rng.uniform(-5, -1, n_features)
    max_act = rng.lognormal(1.5, 0.5, n_features)
    clusters = rng.normal(0, 6, (12, 2))
    xy = clusters[rng.integers(0, 12, n_features)] + rng.normal(0, 1, (n_features, 2))
    features, examples, neighbours = [], [], []
    for i in range(n_features):
        # Draws in this order (feature, examples, neighbours), so a seed always gives one store.
        explanation = (explanations or {}).get(i)
        stats = (float(density[i]), float(max_act[i]), n_tokens)
        features.append(_random_feature_row(i, stats, xy[i], edges, vocab, explanation, rng))
        levels = _random_levels(float(max_act[i]), top_n, n_quantiles, quantile_examples, rng)
        examples += _random_example_rows(i, levels, len(vocab), window, rng)
        neighbours += _random_neighbour_rows(i, n_features, n_neighbours, rng)
    params = {"top_n": top_n, "n_quantiles": n_quantiles, "window": window}
    defaults = _random_store_meta(density, edges, n_features, n_tokens, params)
    path = Path(path)
    conn = schema.create(path)
    with conn:
        conn.executemany("INSERT INTO vocab VALUES (?, ?)", list(enumerate(vocab)))
        conn.executemany("INSERT INTO features VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", features)
        conn.executemany("INSERT INTO examples VALUES (?,?,?,?,?,?,?,?,?,?)", examples)
        conn.executemany("INSERT INTO neighbours VALUES (?,?,?,?,?)", neighbours)
        schema.write_meta(conn, **{**defaults, **(meta or {})})
    conn.close()
    return path


def _random_feature_row(
    i: int, stats: tuple, xy, edges, vocab: list[str], explanation: str | None, rng
) -> tuple:
    """Feature i's `features` row. stats: (density, max_act, n_tokens); it fires density x
    n_tokens times (at least once) uniformly below max_act; xy: its map point [2]; its top and
    bottom logits are 20 random tokens of `vocab`."""
    import json

    import numpy as np

    density, max_act, n_tokens = stats
    n_fired = max(1, int(density * n_tokens))
    fired = rng.uniform(0, max_act, n_fired)
    logit_ids = rng.choice(len(vocab), min(20, len(vocab)), replace=False).tolist()
    effects = np.linspace(2, -2, len(logit_ids)).tolist()
    ranked = [[t, vocab[t], e] for t, e in zip(logit_ids, effects, strict=True)]
    top, bottom = ranked[:10], ranked[10:]
    return (
        i,
        n_fired,
        density,
        max_act,
        float(fired.mean()),
        json.dumps(np.histogram(fired, edges)[0].tolist()),
        json.dumps(top),
        json.dumps(bottom),
        float(xy[0]),
        float(xy[1]),
        explanation,
        None if explanation is None else 0.5,
    )


def _random_levels(
    max_act: float, top_n: int, n_quantiles: int, quantile_examples: int, rng
) -> list[tuple]:
    """[(kind, bucket, rank, act)] of a feature's examples: `top_n` top ones falling from
    max_act, then `quantile_examples` at a random level inside each of `n_quantiles` buckets."""
    levels: list[tuple[str, int | None, int, float]] = [
        ("top", None, r, max_act * (1 - r / (2 * top_n))) for r in range(top_n)
    ]
    levels += [
        ("quantile", b, r, max_act * (b + rng.uniform()) / n_quantiles)
        for b in range(n_quantiles)
        for r in range(quantile_examples)
    ]
    return levels


def _random_example_rows(
    i: int, levels: list[tuple], n_vocab: int, window: int, rng
) -> list[tuple]:
    """Feature i's `examples` rows, one per level: a random window of tokens with the level's
    activation at 3/4 of the way along and a fifth of the other positions firing below it."""
    import json

    import numpy as np

    centre = window * 3 // 4
    level_acts = np.array([act for *_, act in levels])
    windows = rng.integers(0, n_vocab, (len(levels), window)).tolist()
    spread = rng.uniform(0, 1, (len(levels), window)) * level_acts[:, None]  # [levels, window]
    values = np.where(rng.uniform(size=spread.shape) < 0.2, spread, 0.0)
    values[:, centre] = level_acts
    values = np.round(values, 4).tolist()
    rows = []
    for (kind, bucket, rank, act), tokens, acts in zip(levels, windows, values, strict=True):
        doc = int(rng.integers(0, 10**6))
        rows.append(
            (i, kind, rank, bucket, float(act), doc, centre, json.dumps(tokens),
             json.dumps(acts), centre)
        )  # fmt: skip
    return rows


def _random_neighbour_rows(i: int, n_features: int, n_neighbours: int, rng) -> list[tuple]:
    """Feature i's `neighbours` rows: up to `n_neighbours` other features at falling cosines."""
    others = rng.choice(n_features - 1, min(n_neighbours, n_features - 1), replace=False)
    rows = []
    for rank, j in enumerate(others.tolist()):
        neighbour = j + (j >= i)  # every feature but i
        rows.append((i, rank, neighbour, 0.9 - 0.05 * rank, float(rng.uniform())))
    return rows


def _random_store_meta(density, edges, n_features: int, n_tokens: int, params: dict) -> dict:
    """The meta of a random store: a complete analysis of a 32-wide TopK SAE on
    blocks.1.hook_resid_post, with the histogram of the features' log10 `density` [n_features]."""
    import numpy as np

    density_counts, density_edges = np.histogram(np.log10(density), np.linspace(-6, 0, 31))
    return {
        "complete": True,
        "sae": {
            "path": None,
            "sha256": None,
            "arch": "topk",
            "n_features": n_features,
            "d_in": 32,
            "site": "blocks.1.hook_resid_post",
            "model": None,
            "activation_convention": "f",
        },
        "acts": {"path": None, "n_tokens": n_tokens, "site": "blocks.1.hook_resid_post"},
        "model": {"name": None, "revision": None},
        "params": params,
        "tokens_seen": n_tokens,
        "hist_edges": edges.tolist(),
        "density_hist": {"edges": density_edges.tolist(), "counts": density_counts.tolist()},
    }


def max_act_feature_store(path: str | Path, n_features: int, complete: bool = True):
    """A minimal feature store in which feature i has max activation 1 + i (and nothing else
    of note), its meta naming an SAE of `n_features` features; returns the open sqlite3
    connection, for tests that go on editing the meta."""
    from monoscope.analyze import schema

    conn = schema.create(path)
    conn.executemany(
        "INSERT INTO features (id, n_fired, density, max_act, mean_act, hist) VALUES "
        "(?, 1, 0.1, ?, 0.5, '[]')",
        [(i, 1.0 + i) for i in range(n_features)],
    )
    sae = {"n_features": n_features, "activation_convention": "f"}
    schema.write_meta(conn, complete=complete, sae=sae)
    conn.commit()
    return conn


def write_interpretation(
    path: str | Path,
    explanations: dict[int, str],
    scores: dict[int, dict[str, float]] | None = None,
    unparsable: dict[int, str] | None = None,
    explainer: str = "local:test",
    judge: str = "local:test",
    n_random: int = 4,
    seed: int = 0,
) -> Path:
    """Add interpret-stage rows (analyze/schema.py, version 2) to a store written by
    `random_feature_store`: an ok explanation per entry of `explanations`, an unparsable one
    (its raw answer) per entry of `unparsable`, and per entry of `scores` one row per
    {scorer: score} whose details grade the feature's held-out windows (odd-ranked top and
    later quantile examples, and non-firing 'random' windows, `n_random` of them added here
    where the feature has none) with
    answers drawn at random, simulation's with per-token `predicted` activations and fuzzing's
    with the `marked` tokens. features.explanation / score are refreshed as the interpret stage
    does. Returns `path`."""
    import numpy as np

    from monoscope.analyze import schema
    from monoscope.interpret.explainer import ExplanationResult
    from monoscope.interpret.scorers import SCORERS, ScoreResult
    from monoscope.interpret.store import write_explanation, write_score

    rng = np.random.default_rng(seed)
    conn = schema.create(path)  # migrates a store another version created
    prompt = "explain-test"
    for fid, text in explanations.items():
        write_explanation(conn, fid, explainer, ExplanationResult("ok", text, text, [], [], prompt))
    for fid, raw in (unparsable or {}).items():
        unparsed = ExplanationResult("unparsable", None, raw, [], [], prompt)
        write_explanation(conn, fid, f"{explainer}-2", unparsed)
    for fid, by_scorer in (scores or {}).items():
        windows = _held_out_windows(conn, fid, n_random, rng)
        scored = {"explainer": explainer, "prompt_version": prompt, "text": explanations[fid]}
        for scorer, score in by_scorer.items():
            details = [_judged(scorer, w, rng) for w in windows]
            metrics = {"n": len(details), "n_unparsable": 0}
            chance = SCORERS[scorer].chance
            result = ScoreResult(scorer, f"{scorer}-test", "ok", score, chance, metrics, details)
            write_score(conn, fid, judge, scored, result)
    conn.close()
    return Path(path)


def _held_out_windows(conn, fid: int, n_random: int, rng) -> list[tuple]:
    """[(kind, bucket, rank, acts)] held out for scoring; adds `n_random` non-firing windows
    to a feature that has none."""
    import json

    window, n_vocab, n_had = conn.execute(
        "SELECT (SELECT length(acts) - length(replace(acts, ',', '')) + 1 FROM examples "
        "WHERE feature = ? LIMIT 1), (SELECT count(*) FROM vocab), "
        "(SELECT count(*) FROM examples WHERE feature = ? AND kind = 'random')",
        (fid, fid),
    ).fetchone()
    for rank in range(n_random if n_had == 0 else 0):
        tokens = json.dumps(rng.integers(0, n_vocab, window).tolist())
        conn.execute(
            "INSERT OR REPLACE INTO examples VALUES (?, 'random', ?, NULL, 0, ?, ?, ?, ?, ?)",
            (fid, rank, int(rng.integers(10**6)), window // 2, tokens, json.dumps([0.0] * window),
             window // 2),
        )  # fmt: skip
    rows = conn.execute(
        "SELECT kind, bucket, rank, acts FROM examples WHERE feature = ? AND ("
        "(kind = 'top' AND rank % 2 = 1) OR (kind = 'quantile' AND rank > 0) OR kind = 'random')"
        " ORDER BY kind, bucket, rank",
        (fid,),
    ).fetchall()
    return [(kind, bucket, rank, json.loads(acts)) for kind, bucket, rank, acts in rows]


def _judged(scorer: str, window: tuple, rng) -> dict:
    """One held-out window graded by a judge that is right three times in four, in the shape
    the scorers write (monoscope/interpret/scorers)."""
    import numpy as np

    kind, bucket, rank, acts = window
    firing = int(kind != "random")
    right = bool(rng.uniform() < 0.75)
    judged = {"kind": kind, "bucket": bucket, "rank": rank, "truth": firing}
    if scorer == "simulation":
        top = max(acts) or 1.0
        noise = rng.uniform(0, 3 if right else 10, len(acts))
        predicted = np.minimum(10.0, 10 * np.array(acts) / top + noise).round(2).tolist()
        return {**judged, "truth": [round(a, 3) for a in acts], "answer": predicted}
    if scorer == "embedding":
        return {**judged, "answer": round(float(rng.uniform(0.3, 0.6) if right else 0.2), 4)}
    answer = firing if right else 1 - firing
    if scorer == "fuzzing":
        marked = int(np.argmax(acts)) if firing else int(rng.integers(len(acts)))
        return {**judged, "answer": answer, "batch": 0, "marked": [marked]}
    return {**judged, "answer": answer, "batch": 0}


def harvest_tiny(lm, corpus: str | Path, out: str | Path, site: str, tokens: int = 1200, **options):
    """A small activation store of `lm` (a tiny model) on `corpus` at `site`: `tokens` rows in
    contexts of 32 tokens unless `options` say otherwise (HarvestConfig's fields)."""
    from monoscope.harvest import HarvestConfig, run

    options = {"context": 32, "progress": False, **options}
    cfg = HarvestConfig(
        model=lm.name, sites=[site], corpus=str(corpus), tokens=tokens, out=str(out), **options
    )
    return run(cfg, lm)


SPARSIFY_OPTION_CASES = {
    "topk": {},
    "skip_connection": {"skip_connection": True},
    "transcode": {"transcode": True},
    "skip transcoder": {"transcode": True, "skip_connection": True},
    "multi_topk": {"multi_topk": True},
    "no normalize_decoder": {"normalize_decoder": False},
    "groupmax": {"activation": "groupmax"},
    "groupmax with skip": {"activation": "groupmax", "skip_connection": True},
}
"""sparsify `SparseCoderConfig` options with an exact meaning in monoscope, by case name: the
unit tests (files written as sparsify writes them) and the real-library tier share them."""
