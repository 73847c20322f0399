"""What a prompt reads from the cache, what it writes, and how that is billed.

Anthropic's billing, with positions counted in prompt tokens: A is the longest prefix found in
the cache (read), B the last 1-hour breakpoint after A (B - A written for an hour), C the last
breakpoint (C - max(A, B) written for five minutes); the rest of the prompt is plain input.
A hit is looked for at every block boundary up to `LOOKBACK_BLOCKS` before each breakpoint.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tercet.cache.store import PromptCache
from tercet.engine.base import Breakpoint, CacheTTL, CacheUsage

LOOKBACK_BLOCKS = 20


@dataclass(frozen=True)
class CachePoint:
    """A prefix of the prompt that may be cached: its length in tokens and its key."""

    tokens: int
    key: str


@dataclass(frozen=True)
class CacheWrite:
    point: CachePoint
    ttl: CacheTTL


@dataclass(frozen=True)
class CachePlan:
    """The cache's part in one prompt, decided before generation starts."""

    usage: CacheUsage
    writes: tuple[CacheWrite, ...]  # prefixes to save while prefilling, shortest first
    # Every block boundary, longest first: where a restore may start (for speed, billed or not).
    restorable: tuple[CachePoint, ...]


def prefix_keys(
    fingerprint: str, scope: str, tokens: Sequence[int], lengths: Sequence[int]
) -> list[str]:
    """The cache key of each prefix `tokens[:n]` for n in `lengths` (ascending): a hash of the
    model's fingerprint, the cache scope and the tokens, computed in one pass.

    The scope (the request's owner) keeps owners apart: a hit would tell one owner, by its
    billing and its speed, that another sent the same prefix."""
    data = np.asarray(tokens, dtype=np.int32).tobytes()
    scoped = scope.encode()
    # Length-prefixed, so that no scope's bytes can run on into the tokens of another's key.
    hasher = hashlib.sha256(fingerprint.encode() + len(scoped).to_bytes(8, "big") + scoped)
    keys: list[str] = []
    done = 0
    for length in lengths:
        hasher.update(data[done * 4 : length * 4])
        done = length
        keys.append(hasher.copy().hexdigest())
    return keys


def plan_cache(
    boundaries: Sequence[CachePoint],
    breakpoints: Sequence[Breakpoint],
    cache: PromptCache,
    min_tokens: int,
) -> CachePlan:
    """Bill and plan a prompt whose block `i` ends at `boundaries[i]`; refreshes the TTL of
    the entries it reads."""
    marked = [
        (boundaries[b.block], b.ttl)
        for b in breakpoints
        if boundaries[b.block].tokens >= min_tokens
    ]
    hit = 0
    hit_point: CachePoint | None = None
    hit_ttl: CacheTTL = "5m"
    for breakpoint in breakpoints:
        first = max(0, breakpoint.block - LOOKBACK_BLOCKS)
        for point in reversed(boundaries[first : breakpoint.block + 1]):
            if point.tokens <= hit or point.tokens < min_tokens:
                break
            if cache.contains(point.key):
                hit, hit_point, hit_ttl = point.tokens, point, breakpoint.ttl
                break
    if hit_point is not None:
        cache.refresh(hit_point.key, hit_ttl)
    for point, ttl in marked:  # earlier breakpoints that are cached too stay alive
        if point.tokens < hit and cache.contains(point.key):
            cache.refresh(point.key, ttl)
    later = [(point, ttl) for point, ttl in marked if point.tokens > hit]
    hour = max((p.tokens for p, ttl in later if ttl == "1h"), default=hit)
    last = max((p.tokens for p, _ in later), default=hit)
    usage = CacheUsage(read=hit, written_1h=hour - hit, written_5m=max(last - max(hour, hit), 0))
    writes: dict[int, CacheWrite] = {}
    for point, ttl in later:
        kept = writes.get(point.tokens)
        if kept is None or ttl == "1h":
            writes[point.tokens] = CacheWrite(point, ttl)
    unique = {p.tokens: p for p in boundaries if p.tokens > 0}
    return CachePlan(
        usage=usage,
        writes=tuple(writes[n] for n in sorted(writes)),
        restorable=tuple(unique[n] for n in sorted(unique, reverse=True)),
    )
