"""Where a request's prompt-cache breakpoints are, by Anthropic's rules.

Breakpoints are `cache_control` markers on blocks, read in prompt order (tools, system,
messages), plus the request's top-level `cache_control`, which marks the last block that can
carry one. At most four in all; 1-hour ones may not follow 5-minute ones.
"""

from __future__ import annotations

import itertools

from tercet.engine.base import Breakpoint, Conversation
from tercet.wire.base import CacheControl
from tercet.wire.content import TextBlockParam
from tercet.wire.errors import InvalidRequestError

MAX_BREAKPOINTS = 4
# Blocks that cannot carry `cache_control`; the automatic breakpoint skips them.
_UNMARKABLE = frozenset({"thinking", "redacted_thinking"})


def find_breakpoints(
    conversation: Conversation, automatic: CacheControl | None
) -> tuple[Breakpoint, ...]:
    """The breakpoints of a conversation, in prompt order; raises `InvalidRequestError`."""
    marks = conversation.cache_controls()
    found: dict[int, CacheControl] = {i: mark for i, mark in enumerate(marks) if mark}
    if automatic is not None:
        last = _last_markable(conversation)
        if last is not None:
            found.setdefault(last, automatic)
    if len(found) > MAX_BREAKPOINTS:
        raise InvalidRequestError(
            f"A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be provided. "
            f"Found {len(found)}."
        )
    breakpoints = tuple(Breakpoint(i, found[i].ttl or "5m") for i in sorted(found))
    for earlier, later in itertools.pairwise(breakpoints):
        if earlier.ttl == "5m" and later.ttl == "1h":
            raise InvalidRequestError(
                "cache_control: a block with ttl='1h' must not come after a block with "
                "ttl='5m' (blocks are read in the order tools, system, messages)"
            )
    return breakpoints


def _last_markable(conversation: Conversation) -> int | None:
    blocks = conversation.blocks()
    for index in range(len(blocks) - 1, -1, -1):
        block = blocks[index]
        if getattr(block, "type", None) in _UNMARKABLE:
            continue
        if isinstance(block, TextBlockParam) and not block.text:
            continue
        return index
    return None
