"""Steering and attribution for the browser: the feature page's steering panel and the
attribution view run monoscope.steer's `compare` and `attribute` on the store's model and SAE
(model.py), with the store's max activations as the unit of "5x" strengths.

Generation on a CPU takes seconds, so requests are bounded (prompt and new tokens, table rows).
The endpoints run in the server's thread pool, one at a time under the model's lock. Bad input
raises SteeringError with a message for the user (the API answers 422 with it).
"""

from __future__ import annotations

import math
import time
from typing import Any

from monoscope.serve.model import ServedModel
from monoscope.serve.store import FeatureStore
from monoscope.steer import (
    FeatureEdit,
    Sampling,
    SteeringError,
    SteeringSpec,
    attribute,
    compare,
    encode_prompt,
    parse_value,
)

MAX_PROMPT_TOKENS = 256
"""Longest prompt (in tokens, BOS and chat template included) one request may run."""
MAX_PROMPT_CHARS = 16 * MAX_PROMPT_TOKENS
"""Longest prompt in characters, checked before the model's lock is taken and the prompt
tokenized (English averages about 4 characters a token)."""
MAX_NEW_TOKENS = 64
"""Most tokens one steering request generates (twice: unsteered and steered)."""
MAX_ROWS = 50
"""Most (feature, position) rows, each ablated once, in one attribution table."""
PER_POSITION = 8
"""Features listed for each prompt token in the attribution view."""
TOP_LOGIT_TOKENS = 5
"""Top direct-logit tokens per feature whose log-probability shift is reported."""


class SteerEngine:
    """Steered vs unsteered continuations and attribution tables for one feature store."""

    def __init__(self, served: ServedModel, store: FeatureStore) -> None:
        self.served, self.store = served, store

    def limits(self) -> dict[str, int]:
        """What the front end needs to know to bound its inputs."""
        return {
            "max_new_tokens": MAX_NEW_TOKENS,
            "max_prompt_tokens": MAX_PROMPT_TOKENS,
            "max_rows": MAX_ROWS,
        }

    def steer(
        self,
        feature: int,
        prompt: str,
        strength: float | str = 5.0,
        relative: bool = True,
        mode: str = "clamp",
        positions: str | list[int] = "all",
        max_new_tokens: int = 32,
        temperature: float = 0.7,
        seed: int = 0,
        chat: bool | None = None,
    ) -> dict[str, Any]:
        """steer.compare's JSON for one edit of `feature` (a checked store id), plus
        {"feature", "seconds"}.

        strength: a number, or text as the command line writes it ("10x", "-2.5"). A number
        is a multiple of the feature's max activation in the store when `relative` (clamp and
        add; multiply takes a plain factor, ablate nothing); text ending in "x" always is.
        positions: all, prompt or generated tokens (or a list of token positions).
        chat: wrap the prompt in the tokenizer's chat template; None: when it has one.
        """
        edit = _edit(feature, strength, relative, mode, positions)
        if not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
            raise SteeringError(f"max_new_tokens must be 1..{MAX_NEW_TOKENS}, got {max_new_tokens}")
        if not 0 <= seed < 2**32:
            raise SteeringError(f"seed must be 0..{2**32 - 1}, got {seed}")
        sampling = Sampling(max_new_tokens, temperature, seed, n=1)
        _require_text(prompt)
        start = time.perf_counter()
        with self.served.lock:
            lm, sae = self.served.load_checked()
            max_acts = {"sae": self.served.max_acts()} if edit.relative else None
            chat = _chat(lm, chat)
            _check_length(lm, prompt, chat)
            result = compare(
                lm,
                {"sae": sae},
                SteeringSpec((edit,)),
                prompt,
                sampling,
                max_acts,
                chat=chat,
                top_tokens=TOP_LOGIT_TOKENS,
            )
        return _json_safe({**result, "feature": feature, "seconds": time.perf_counter() - start})

    def attribute(
        self, prompt: str, target: str | None = None, top: int = 20, chat: bool = False
    ) -> dict[str, Any]:
        """steer.attribute's JSON for the next token after `prompt` (`target`: one token; None
        or "": the model's own top token), with the top `top` rows ablated, plus:

          position_totals [per token: the sum of every active feature's attribution there],
          features {id: catalogue summary} for the features the rows and by_position name,
          seconds.
        by_position keeps each position's PER_POSITION largest |attribution|.
        """
        if not 1 <= top <= MAX_ROWS:
            raise SteeringError(f"top must be 1..{MAX_ROWS}, got {top}")
        _require_text(prompt)
        start = time.perf_counter()
        with self.served.lock:
            lm, sae = self.served.load_checked()
            _check_length(lm, prompt, chat)
            # Every active feature per position (inactive ones attribute exactly 0), so the
            # totals are exact; trimmed below.
            result = attribute(
                lm,
                sae,
                prompt,
                target or None,
                top=top,
                per_position=sae.cfg.n_features,
                chat=chat,
            )
        totals = []
        for position in result["by_position"]:
            totals.append(sum(f["attribution"] for f in position["features"]))
            del position["features"][PER_POSITION:]
        named = {r["feature"] for r in result["rows"]}
        named.update(f["feature"] for p in result["by_position"] for f in p["features"])
        catalog = self.store.catalog
        result["position_totals"] = totals
        result["features"] = {
            str(f): catalog.summary(f) for f in sorted(named) if f < catalog.n_features
        }
        result["seconds"] = time.perf_counter() - start
        return _json_safe(result)


def _edit(
    feature: int, strength: float | str, relative: bool, mode: str, positions: str | list[int]
) -> FeatureEdit:
    if mode == "ablate":
        return FeatureEdit(feature, "ablate", positions=positions)
    if isinstance(strength, str):
        value, written_x = parse_value(strength)
    elif isinstance(strength, int | float) and not isinstance(strength, bool):
        value, written_x = float(strength), False
    else:
        raise SteeringError(f"strength must be a number or text such as 10x, got {strength!r}")
    # A plain number is a multiple of the max for the modes that take one (not multiply).
    relative = written_x or (relative and mode in ("clamp", "add"))
    return FeatureEdit(feature, mode, value, relative, positions=positions)


def _require_text(prompt: str) -> None:
    if not prompt.strip():
        raise SteeringError("the prompt is empty: type a prompt to run")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise SteeringError(
            f"the prompt is {len(prompt):,} characters long; the limit here is "
            f"{MAX_PROMPT_CHARS:,} (and {MAX_PROMPT_TOKENS} tokens)"
        )


def _chat(lm, chat: bool | None) -> bool:
    """chat as asked; None: whether the tokenizer has a chat template."""
    if chat is None:
        return bool(getattr(lm.tokenizer, "chat_template", None))
    return chat


def _check_length(lm, prompt: str, chat: bool) -> None:
    n = encode_prompt(lm, prompt, chat).shape[1]
    if n > MAX_PROMPT_TOKENS:
        raise SteeringError(
            f"the prompt is {n} tokens long; the limit here is {MAX_PROMPT_TOKENS} "
            "(each request runs the model on the server)"
        )


def _json_safe(value: Any) -> Any:
    """The value with non-finite floats (an overflowing perplexity) as None: JSON has no inf."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value
