"""`PriceTable`: US dollars per million tokens, per model, for --plan and --budget-usd.

The built-in figures are the providers' public list prices (standard tier, no batch or cached-
input discounts) for a few common models; prices change, so a JSON file given with --prices
overrides or extends them: {"model": {"input": 0.15, "output": 0.6}}. The local backend costs
nothing. A model neither table knows has no price, and a budget cannot be kept without one.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Price:
    input_per_m: float
    """USD per million prompt tokens."""
    output_per_m: float
    """USD per million completion tokens."""

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_per_m + completion_tokens * self.output_per_m) / 1e6


BUILTIN_PRICES: dict[str, Price] = {
    # OpenAI API pricing page (standard tier).
    "gpt-4o-mini": Price(0.15, 0.60),
    "gpt-4o": Price(2.50, 10.00),
    "gpt-4.1": Price(2.00, 8.00),
    "gpt-4.1-mini": Price(0.40, 1.60),
    "gpt-4.1-nano": Price(0.10, 0.40),
    # Anthropic pricing page (base input and output).
    "claude-haiku-4-5": Price(1.00, 5.00),
    "claude-sonnet-4-5": Price(3.00, 15.00),
    "claude-3-5-haiku": Price(0.80, 4.00),
}

FREE_BACKENDS = ("local",)

_DATE_SUFFIX = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{8}|latest)$")
"""gpt-4o-mini-2024-07-18 and claude-haiku-4-5-20251001 cost what their family costs."""


class PriceError(ValueError):
    """A price that is needed is not known, or the --prices file is malformed."""


def _read_prices(path: str | Path) -> dict[str, Price]:
    try:
        data = json.loads(Path(path).read_text())
        return {model: Price(float(p["input"]), float(p["output"])) for model, p in data.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise PriceError(
            f'--prices {path}: expected JSON {{"model": {{"input": USD/1M, "output": USD/1M}}}} '
            f"({err})"
        ) from err


class PriceTable:
    """Prices by model: the built-in table, overridden by `overrides` (or a --prices file)."""

    def __init__(self, overrides: dict[str, Price] | None = None) -> None:
        self.prices = {**BUILTIN_PRICES, **(overrides or {})}

    @classmethod
    def load(cls, path: str | Path = "") -> PriceTable:
        """The built-in table, overridden by the JSON file at `path` when one is given."""
        return cls(_read_prices(path) if path else None)

    def price(self, backend: str, model: str) -> Price | None:
        """The model's price; Price(0, 0) for the local backend; None when unknown."""
        if backend in FREE_BACKENDS:
            return Price(0.0, 0.0)
        if model in self.prices:
            return self.prices[model]
        return self.prices.get(_DATE_SUFFIX.sub("", model))

    def require(self, backend: str, model: str) -> Price:
        """The model's price, or PriceError naming --prices (a budget needs a price)."""
        price = self.price(backend, model)
        if price is None:
            raise PriceError(
                f"no price is known for {backend} model {model!r}, so a budget cannot be kept: "
                f'give one with --prices FILE.json, e.g. {{"{model}": {{"input": 0.15, '
                f'"output": 0.6}}}} (USD per million tokens; 0 for a free local server)'
            )
        return price
