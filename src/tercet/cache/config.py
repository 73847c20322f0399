"""Prompt-cache settings, as data."""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1024 * 1024


@dataclass(frozen=True)
class CacheConfig:
    """Limits of the prompt cache. Sizes are bytes of engine state (KV), not tokens."""

    ram_bytes: int = 2048 * MIB
    disk_bytes: int = 8192 * MIB  # 1-hour entries and what RAM evicts; 0 turns the disk tier off
    # Prefixes shorter than this are not cached (as Anthropic's minimum for Claude 4 models);
    # breakpoints below it are accepted and billed as plain input.
    min_tokens: int = 1024
