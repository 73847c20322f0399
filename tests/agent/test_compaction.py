"""Compaction: the model summarises a conversation near its window, the task and the latest
steps stay verbatim, and a compaction that cannot make room stops the run."""

from __future__ import annotations

from typing import Any

import pytest

from tercet.agent import (
    Budget,
    Compacted,
    CompactionConfig,
    Hooks,
    ModelRequest,
    PreCompactInput,
    PreCompactOutput,
    RequestSent,
    ScriptedModel,
    Usage,
    tool_use,
    turn,
)
from tercet.agent.compaction import SUMMARY_HEADER, SUMMARY_PROMPT, compacted_messages
from tercet.agent.scripted import ScriptedTurn
from tests.agent.conftest import EchoTool, MakeAgent, collect, result_of

pytestmark = pytest.mark.anyio
TASK = "Echo the numbers one to three"


def echo(text: str, prompt_tokens: int) -> ScriptedTurn:
    return turn(tool_use("echo", {"text": text}), usage=Usage(prompt_tokens, 10))


def summary(request: ModelRequest) -> ScriptedTurn:
    """The summary reply; checks it was asked for the way compaction asks."""
    assert request.tool_choice == {"type": "none"}
    assert request.messages[-1]["content"][-1]["text"].startswith(SUMMARY_PROMPT)
    return turn("Echoed 1 and 2.", usage=Usage(50, 10))


def script() -> list[Any]:
    return [
        echo("1", 500),
        echo("2", 900),  # over 0.8 of the 1000-token window: compact before the next turn
        summary,
        echo("3", 400),
        turn("Done.", usage=Usage(450, 5)),
    ]


async def test_compaction_keeps_the_task_the_summary_and_the_latest_step(
    make_agent: MakeAgent,
) -> None:
    model = ScriptedModel(script(), context_window=1000)
    agent = make_agent(model, tools=[EchoTool()], compaction=CompactionConfig(keep_steps=1))
    events = await collect(agent.run(TASK))
    result = result_of(events)
    assert result.ok and result.turns == 4  # the summary is no turn
    assert result.usage.input_tokens == 500 + 900 + 50 + 400 + 450
    (compacted,) = [e for e in events if isinstance(e, Compacted)]
    assert (compacted.turn, compacted.tokens_before) == (2, 900)
    purposes = [e.purpose for e in events if isinstance(e, RequestSent)]
    assert purposes == ["turn", "turn", "compaction", "turn", "turn"]

    after = model.requests[3].messages  # the first turn after compacting
    task, summary_block = after[0]["content"][:2]
    assert task["text"] == TASK
    assert summary_block["text"] == SUMMARY_HEADER + "Echoed 1 and 2."
    # The latest step verbatim: the call and its result, still paired.
    assert [b["input"] for b in after[1]["content"] if b["type"] == "tool_use"] == [{"text": "2"}]
    assert after[1]["content"][0]["id"] == after[2]["content"][0]["tool_use_id"]
    assert len(after) == 3
    assert compacted.messages == agent.messages[:3]


@pytest.mark.parametrize("stop_after", [2, 3])
async def test_resume_across_a_compaction_is_exact(make_agent: MakeAgent, stop_after: int) -> None:
    whole = ScriptedModel(script(), context_window=1000)
    await make_agent(whole, tools=[EchoTool()]).run_until_done(TASK)
    calls = stop_after if stop_after < 3 else 4  # the summary comes before turn 3
    first = ScriptedModel(script()[:calls], context_window=1000)
    stopped = await make_agent(
        first, tools=[EchoTool()], budget=Budget(max_turns=stop_after)
    ).run_until_done(TASK)
    assert stopped.reason == "max_turns"
    second = ScriptedModel(script()[calls:], context_window=1000)
    resumed = await make_agent(second, tools=[EchoTool()]).resume_until_done(stopped.session_id)
    assert resumed.ok
    assert second.requests == whole.requests[calls:]


async def test_compacting_again_too_soon_is_a_loop(make_agent: MakeAgent) -> None:
    model = ScriptedModel(
        [echo("1", 900), turn("short", usage=Usage(50, 5)), echo("2", 950), turn("never")],
        context_window=1000,
    )
    result = await make_agent(model, tools=[EchoTool()]).run_until_done(TASK)
    assert result.reason == "compaction_loop"
    assert "1 turn(s) after it was compacted" in result.message
    assert len(model.requests) == 3


async def test_a_compaction_that_would_not_shrink_stops(make_agent: MakeAgent) -> None:
    long_summary = turn("word " * 2000, usage=Usage(50, 5))
    model = ScriptedModel([echo("1", 900), long_summary, turn("never")], context_window=1000)
    result = await make_agent(model, tools=[EchoTool()]).run_until_done(TASK)
    assert result.reason == "compaction_loop" and "smaller" in result.message


async def test_pre_compact_hook_adds_instructions(make_agent: MakeAgent) -> None:
    seen: list[PreCompactInput] = []

    def keep_paths(hook_input: PreCompactInput) -> PreCompactOutput:
        seen.append(hook_input)
        return PreCompactOutput(instructions="Keep every file path.")

    hooks = Hooks()
    hooks.add("PreCompact", keep_paths)
    model = ScriptedModel(
        [echo("1", 900), turn("summary", usage=Usage(50, 5)), turn("done")], context_window=1000
    )
    result = await make_agent(model, tools=[EchoTool()], hooks=hooks).run_until_done(TASK)
    assert result.ok
    assert (
        model.requests[1].messages[-1]["content"][-1]["text"].endswith("\n\nKeep every file path.")
    )
    assert [(s.prompt_tokens, s.context_window, s.message_count) for s in seen] == [(900, 1000, 3)]


async def test_the_window_comes_from_the_config_before_the_model(make_agent: MakeAgent) -> None:
    model = ScriptedModel([echo("1", 900), turn("done")], context_window=1000)
    big = CompactionConfig(context_window=100_000)
    assert (await make_agent(model, tools=[EchoTool()], compaction=big).run_until_done(TASK)).ok
    off = CompactionConfig(enabled=False)
    model = ScriptedModel([echo("1", 900), turn("done")], context_window=1000)
    assert (await make_agent(model, tools=[EchoTool()], compaction=off).run_until_done(TASK)).ok


def test_compacted_history_keeps_tool_pairs_whole() -> None:
    messages: list[dict[str, Any]] = [{"role": "user", "content": [{"type": "text", "text": "t"}]}]
    for step in range(4):
        calls = [{"type": "tool_use", "id": f"t{step}{i}", "name": "x", "input": {}} for i in "ab"]
        results = [
            {"type": "tool_result", "tool_use_id": c["id"], "content": "y" * 200} for c in calls
        ]
        messages += [{"role": "assistant", "content": calls}, {"role": "user", "content": results}]
    task = [{"type": "text", "text": "t"}]
    compacted = compacted_messages(task, "s", messages, keep_steps=2)
    assert compacted is not None
    assert [m["role"] for m in compacted] == ["user", "assistant", "user", "assistant", "user"]
    used = {b["id"] for m in compacted for b in m["content"] if b["type"] == "tool_use"}
    answered = {
        b["tool_use_id"] for m in compacted for b in m["content"] if b["type"] == "tool_result"
    }
    assert used == answered == {"t2a", "t2b", "t3a", "t3b"}
    # Asked to keep more than there is, it keeps nothing rather than grow.
    small = compacted_messages(task, "s", messages[:3], keep_steps=5)
    assert small is not None and len(small) == 1
