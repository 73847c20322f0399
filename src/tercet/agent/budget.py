"""Budgets that end a run, and what a run costs: prices per model, as data."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from tercet.agent.events import ResultReason, Usage


@dataclass(frozen=True)
class Budget:
    """Hard limits for one run, checked before every model call and between the deltas of a
    reply (where a reply on its way counts what it has streamed so far); None: no limit."""

    max_turns: int | None = 100  # model calls for turns (compaction summaries not counted)
    max_total_tokens: int | None = None  # prompt and output tokens of every call, summed
    max_wall_time_s: float | None = None  # seconds since the run started
    max_cost_usd: float | None = None  # by `prices`; models without a price cost nothing

    def spent(
        self, *, turns: int | None, usage: Usage, cost_usd: float, elapsed_s: float
    ) -> tuple[ResultReason, str] | None:
        """The limit reached, and a message saying so; None while all are left. `turns`
        None: the next call is no turn (a compaction's summary), so turns do not count."""
        if self.max_wall_time_s is not None and elapsed_s >= self.max_wall_time_s:
            return "max_wall_time", f"the run took {elapsed_s:.1f}s of {self.max_wall_time_s:g}s"
        if turns is not None and self.max_turns is not None and turns >= self.max_turns:
            return "max_turns", f"the run used its {self.max_turns} turns"
        tokens = usage.total_tokens
        if self.max_total_tokens is not None and tokens >= self.max_total_tokens:
            return "max_total_tokens", f"the run used {tokens} tokens of {self.max_total_tokens}"
        if self.max_cost_usd is not None and cost_usd >= self.max_cost_usd:
            return "max_cost", f"the run cost ${cost_usd:.4f} of ${self.max_cost_usd:g}"
        return None


@dataclass(frozen=True)
class ModelPrice:
    """US dollars per million tokens. Cache writes and reads are priced as multiples of the
    input price, as Anthropic prices them."""

    input: float
    output: float
    cache_write_multiplier: float = 1.25  # five-minute cache writes
    cache_read_multiplier: float = 0.1


# Anthropic's list prices. A model name matches the longest key it starts with, so dated names
# (claude-sonnet-4-5-20250929) find their family. Unknown models cost 0; tokens still count.
PRICES: Mapping[str, ModelPrice] = {
    "claude-opus-4-6": ModelPrice(5, 25),
    "claude-opus-4-5": ModelPrice(5, 25),
    "claude-opus-4-1": ModelPrice(15, 75),
    "claude-opus-4-0": ModelPrice(15, 75),
    "claude-opus-4-20250514": ModelPrice(15, 75),
    "claude-sonnet-4": ModelPrice(3, 15),
    "claude-3-7-sonnet": ModelPrice(3, 15),
    "claude-haiku-4-5": ModelPrice(1, 5),
    "claude-3-5-haiku": ModelPrice(0.8, 4),
    "claude-3-haiku": ModelPrice(0.25, 1.25),
}


def price_of(model: str, prices: Mapping[str, ModelPrice] = PRICES) -> ModelPrice | None:
    """The price of `model`: the entry with the longest name it starts with, if any."""
    keys = [key for key in prices if model.startswith(key)]
    return prices[max(keys, key=len)] if keys else None


def cost_of(model: str, usage: Usage, prices: Mapping[str, ModelPrice] = PRICES) -> float:
    """What `usage` of `model` costs in US dollars (0 for a model without a price)."""
    price = price_of(model, prices)
    if price is None:
        return 0.0
    input_units = (
        usage.input_tokens
        + usage.cache_creation_input_tokens * price.cache_write_multiplier
        + usage.cache_read_input_tokens * price.cache_read_multiplier
    )
    return (input_units * price.input + usage.output_tokens * price.output) / 1_000_000
