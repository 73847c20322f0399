"""Anthropic's breakpoint rules and cache billing, on conversations built by hand."""

from __future__ import annotations

from typing import Any

import pytest

from tercet.cache.breakpoints import find_breakpoints
from tercet.cache.config import CacheConfig
from tercet.cache.plan import CachePoint, plan_cache
from tercet.cache.store import PromptCache
from tercet.engine.base import Breakpoint, Conversation, Turn
from tercet.wire.base import CacheControl
from tercet.wire.content import TextBlockParam, ThinkingBlockParam
from tercet.wire.errors import InvalidRequestError
from tercet.wire.requests import CustomToolParam


def text(body: str, ttl: str | None = None, marked: bool = False) -> TextBlockParam:
    mark: Any = CacheControl(ttl=ttl) if marked or ttl else None  # type: ignore[arg-type]
    return TextBlockParam(type="text", text=body, cache_control=mark)


def tool(name: str, marked: bool = False) -> CustomToolParam:
    return CustomToolParam(
        name=name,
        input_schema={"type": "object"},
        cache_control=CacheControl() if marked else None,
    )


def conversation(*blocks: TextBlockParam | ThinkingBlockParam, tools: int = 0) -> Conversation:
    return Conversation(
        system=[text("system")],
        turns=[Turn("user", list(blocks))],
        tools=[tool(f"t{i}", marked=(i == 0)) for i in range(tools)],
    )


def test_breakpoints_are_found_in_prompt_order_with_default_ttl() -> None:
    found = find_breakpoints(conversation(text("a", marked=True), text("b")), None)
    assert found == (Breakpoint(1, "5m"),)  # block 0 is the system block
    found = find_breakpoints(conversation(text("a", marked=True), tools=2), None)
    assert found == (Breakpoint(0, "5m"), Breakpoint(3, "5m"))


def test_automatic_breakpoint_marks_the_last_markable_block() -> None:
    thought = ThinkingBlockParam(type="thinking", thinking="hm", signature="s")
    found = find_breakpoints(conversation(text("a"), thought), CacheControl(ttl="1h"))
    assert found == (Breakpoint(1, "1h"),)  # thinking blocks cannot carry cache_control
    # On a block that already has one, it is the same breakpoint.
    found = find_breakpoints(conversation(text("a", marked=True)), CacheControl())
    assert found == (Breakpoint(1, "5m"),)


def test_more_than_four_breakpoints_is_an_error() -> None:
    marked = [text(str(i), marked=True) for i in range(4)]
    assert len(find_breakpoints(conversation(*marked), None)) == 4
    with pytest.raises(InvalidRequestError, match="A maximum of 4 blocks with cache_control"):
        # The automatic breakpoint, on the unmarked last block, is a fifth.
        find_breakpoints(conversation(*marked, text("last")), CacheControl())
    with pytest.raises(InvalidRequestError, match="Found 5"):
        find_breakpoints(conversation(*marked, tools=1), None)


def test_one_hour_breakpoints_must_come_first() -> None:
    assert find_breakpoints(conversation(text("a", ttl="1h"), text("b", marked=True)), None)
    with pytest.raises(InvalidRequestError, match="ttl='1h' must not come after"):
        find_breakpoints(conversation(text("a", marked=True), text("b", ttl="1h")), None)


@pytest.fixture
def cache(tmp_path: Any) -> PromptCache:
    return PromptCache(CacheConfig(min_tokens=100), tmp_path)


POINTS = [CachePoint(n, f"key{n}") for n in (50, 200, 400, 600, 900)]


def test_first_request_writes_then_the_next_reads(cache: PromptCache) -> None:
    breakpoints = [Breakpoint(1, "1h"), Breakpoint(3, "5m")]
    first = plan_cache(POINTS, breakpoints, cache, min_tokens=100)
    assert (first.usage.read, first.usage.written_1h, first.usage.written_5m) == (0, 200, 400)
    assert [(w.point.tokens, w.ttl) for w in first.writes] == [(200, "1h"), (600, "5m")]
    cache.put("key200", 200, bytearray(8), "1h")
    cache.put("key600", 600, bytearray(8), "5m")
    again = plan_cache(POINTS, breakpoints, cache, min_tokens=100)
    assert (again.usage.read, again.usage.written) == (600, 0)
    assert again.writes == ()
    # A longer conversation: the old breakpoint is found by the lookback, the new one written.
    longer = plan_cache(POINTS, [Breakpoint(1, "1h"), Breakpoint(4, "5m")], cache, 100)
    assert (longer.usage.read, longer.usage.written_5m) == (600, 300)


def test_only_the_one_hour_part_after_the_hit_is_billed_for_an_hour(cache: PromptCache) -> None:
    cache.put("key200", 200, bytearray(8), "5m")
    plan = plan_cache(POINTS, [Breakpoint(2, "1h"), Breakpoint(4, "5m")], cache, 100)
    assert (plan.usage.read, plan.usage.written_1h, plan.usage.written_5m) == (200, 200, 500)


def test_breakpoints_below_the_minimum_cache_nothing(cache: PromptCache) -> None:
    plan = plan_cache(POINTS, [Breakpoint(0, "5m")], cache, min_tokens=100)
    assert (plan.usage.read, plan.usage.written, plan.writes) == (0, 0, ())
    # Restoring (for speed) is still planned at every boundary, longest first.
    assert [p.tokens for p in plan.restorable] == [900, 600, 400, 200, 50]


def test_a_hit_further_back_than_the_lookback_is_not_seen(cache: PromptCache) -> None:
    points = [CachePoint(100 + i, f"k{i}") for i in range(30)]
    cache.put("k0", 100, bytearray(8), "5m")
    assert plan_cache(points, [Breakpoint(20, "5m")], cache, 100).usage.read == 100
    assert plan_cache(points, [Breakpoint(21, "5m")], cache, 100).usage.read == 0
