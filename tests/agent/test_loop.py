"""The agent loop's control flow, on a scripted model: budgets, permissions, hooks, stop
reasons, interrupts, prompt caching and thinking."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from tercet.agent import (
    AssistantMessage,
    Budget,
    Decision,
    Hooks,
    ModelRequest,
    PermissionDecided,
    PermissionRequest,
    Permissions,
    PostToolUseInput,
    PostToolUseOutput,
    PreToolUseInput,
    PreToolUseOutput,
    Result,
    ScriptedModel,
    StopInput,
    StopOutput,
    TextDelta,
    TextEditorTool,
    ThinkingDelta,
    ToolCall,
    ToolFinished,
    ToolResult,
    Usage,
    UserMessage,
    thinking,
    tool_use,
    turn,
)
from tercet.agent.tools import BashTool
from tests.agent.conftest import EchoTool, MakeAgent, collect, result_of

pytestmark = pytest.mark.anyio


def echo(text: str, **extra: Any) -> dict[str, Any]:
    return tool_use("echo", {"text": text, **extra})


def forever(request: ModelRequest) -> Any:
    """A reply that always calls a tool, so only a budget can end the run."""
    return turn(echo("again"))


def last_results(request: ModelRequest) -> list[dict[str, Any]]:
    """The tool_result blocks of the request's last (user) message, without cache markers."""
    message = request.messages[-1]
    assert message["role"] == "user"
    return [
        {k: v for k, v in b.items() if k != "cache_control"}
        for b in message["content"]
        if b["type"] == "tool_result"
    ]


# --- the happy path and its events ---------------------------------------------------------


async def test_run_streams_events_in_order_and_ends_with_the_answer(
    make_agent: MakeAgent,
) -> None:
    tool = EchoTool()
    model = ScriptedModel([turn("Let me echo.", echo("hi")), turn("Echoed it.")])
    events = await collect(make_agent(model, tools=[tool]).run("echo hi"))

    kinds = [e.type for e in events]
    assert kinds == [
        "run_started",
        "user_message",
        "request_sent",
        *["text_delta"] * 3,
        "assistant_message",
        "tool_call",
        "permission",
        "tool_result",
        "user_message",
        "request_sent",
        *["text_delta"] * 2,
        "assistant_message",
        "result",
    ]
    result = result_of(events)
    assert result.ok and result.reason == "end_turn"
    assert result.text == "Echoed it."
    assert result.turns == 2
    assert result.usage == sum(
        (e.usage for e in events if isinstance(e, AssistantMessage)), Usage()
    )
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Let me echo.Echoed it."
    assert tool.calls == [{"text": "hi"}]
    assert last_results(model.requests[1]) == [
        {"type": "tool_result", "tool_use_id": events[7].tool_use_id, "content": "hi"}  # type: ignore[union-attr]
    ]


async def test_parallel_tool_calls_are_answered_in_one_user_message(
    make_agent: MakeAgent,
) -> None:
    model = ScriptedModel([turn(echo("a"), echo("b"), echo("c")), turn("done")])
    await make_agent(model, tools=[EchoTool()]).run_until_done("three at once")
    results = last_results(model.requests[1])
    assert [r["content"] for r in results] == ["a", "b", "c"]
    calls = [b for b in model.requests[1].messages[-2]["content"] if b["type"] == "tool_use"]
    assert [r["tool_use_id"] for r in results] == [c["id"] for c in calls]
    assert len({c["id"] for c in calls}) == 3


async def test_unknown_tool_and_failing_tool_are_reported_to_the_model(
    make_agent: MakeAgent,
) -> None:
    model = ScriptedModel([turn(tool_use("nope", {}), echo("x", fail=True)), turn("ok")])
    result = await make_agent(model, tools=[EchoTool()]).run_until_done("try")
    unknown, failed = last_results(model.requests[1])
    assert unknown["is_error"] and "no tool named 'nope'" in unknown["content"]
    assert failed["is_error"] and "the echo chamber collapsed" in failed["content"]
    assert result.ok


# --- budgets ---------------------------------------------------------------------------------


async def test_turn_budget_stops_before_the_next_call(make_agent: MakeAgent) -> None:
    model = ScriptedModel([forever] * 10)
    agent = make_agent(model, tools=[EchoTool()], budget=Budget(max_turns=3))
    result = await agent.run_until_done("loop")
    assert (result.reason, result.turns, len(model.requests)) == ("max_turns", 3, 3)
    assert not result.ok and "3 turns" in result.message
    # The last tool results were kept: the history is whole, ready to resume.
    assert agent.messages[-1]["role"] == "user"


async def test_token_budget_stops_the_run(make_agent: MakeAgent) -> None:
    costly = turn(echo("x"), usage=Usage(input_tokens=900, output_tokens=100))
    model = ScriptedModel([costly] * 10)
    agent = make_agent(model, tools=[EchoTool()], budget=Budget(max_total_tokens=2500))
    result = await agent.run_until_done("loop")
    assert (result.reason, len(model.requests)) == ("max_total_tokens", 3)
    assert result.usage.total_tokens == 3000


async def test_wall_time_budget_stops_the_run(make_agent: MakeAgent) -> None:
    model = ScriptedModel([forever] * 10)
    agent = make_agent(model, tools=[EchoTool(delay=0.3)], budget=Budget(max_wall_time_s=0.2))
    result = await agent.run_until_done("slow")
    assert (result.reason, len(model.requests)) == ("max_wall_time", 1)
    assert result.duration_s >= 0.3


async def test_cost_budget_stops_the_run_by_the_price_table(make_agent: MakeAgent) -> None:
    # claude-sonnet-4-5: $3 per million input tokens, so each turn costs $0.30.
    pricey = turn(echo("x"), usage=Usage(input_tokens=100_000))
    model = ScriptedModel([pricey] * 10)
    agent = make_agent(
        model, model="claude-sonnet-4-5", tools=[EchoTool()], budget=Budget(max_cost_usd=0.5)
    )
    result = await agent.run_until_done("spend")
    assert (result.reason, len(model.requests)) == ("max_cost", 2)
    assert result.cost_usd == pytest.approx(0.6)


async def test_unknown_model_costs_nothing_but_its_tokens_count(make_agent: MakeAgent) -> None:
    pricey = turn(echo("x"), usage=Usage(input_tokens=100_000))
    model = ScriptedModel([pricey, pricey, turn("done", usage=Usage(1, 1))])
    agent = make_agent(
        model, model="my-local-model", tools=[EchoTool()], budget=Budget(max_cost_usd=0.01)
    )
    result = await agent.run_until_done("spend")
    assert result.ok and result.cost_usd == 0
    assert result.usage.input_tokens == 200_001


# --- permissions -----------------------------------------------------------------------------


async def test_denied_call_is_an_error_result_and_nothing_runs(
    make_agent: MakeAgent, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    model = ScriptedModel([turn(tool_use("bash", {"command": "rm -f keep.txt"})), turn("ok")])
    (work / "keep.txt").write_text("precious")
    permissions = Permissions.from_lists(deny=["Bash(rm:*)"], mode="bypassPermissions", cwd=work)
    events = await collect(
        make_agent(model, tools=[BashTool()], permissions=permissions).run("clean up")
    )
    (denial,) = last_results(model.requests[1])
    assert denial["is_error"] is True
    assert (
        "Permission to use bash was denied: denied by the permission rule Bash(rm:*)"
        in (denial["content"])
    )
    assert (work / "keep.txt").read_text() == "precious"
    decision = next(e for e in events if isinstance(e, PermissionDecided))
    assert (decision.action, decision.by) == ("deny", "rules")


async def test_ask_without_a_callback_denies(make_agent: MakeAgent, tmp_path: Path) -> None:
    work = tmp_path / "work"
    model = ScriptedModel([turn(tool_use("bash", {"command": "touch made.txt"})), turn("ok")])
    await make_agent(model, tools=[BashTool()], permissions=Permissions(cwd=work)).run_until_done(
        "make a file"
    )
    (denial,) = last_results(model.requests[1])
    assert denial["is_error"] and "no one can be asked" in denial["content"]
    assert not (work / "made.txt").exists()


@pytest.mark.parametrize("answer", ["allow", "deny"])
async def test_ask_callback_decides(make_agent: MakeAgent, tmp_path: Path, answer: str) -> None:
    work = tmp_path / "work"
    asked: list[PermissionRequest] = []

    async def ask(request: PermissionRequest) -> Decision:
        asked.append(request)
        return Decision("allow", "ok") if answer == "allow" else Decision("deny", "not today")

    model = ScriptedModel([turn(tool_use("bash", {"command": "touch made.txt"})), turn("ok")])
    events = await collect(
        make_agent(model, tools=[BashTool()], permissions=Permissions(cwd=work), ask=ask).run(
            "make a file"
        )
    )
    assert [(r.tool_name, r.description) for r in asked] == [("bash", "bash: touch made.txt")]
    assert "no rule allows" in asked[0].reason
    decision = next(e for e in events if isinstance(e, PermissionDecided))
    assert (decision.action, decision.by) == (answer, "user")
    (outcome,) = last_results(model.requests[1])
    assert (work / "made.txt").exists() == (answer == "allow")
    if answer == "deny":
        assert outcome["is_error"] and outcome["content"].endswith("denied: not today")
    else:
        assert "is_error" not in outcome


async def test_plan_mode_refuses_writes_but_reads(make_agent: MakeAgent, tmp_path: Path) -> None:
    work = tmp_path / "work"
    (work / "a.txt").write_text("alpha\n")
    model = ScriptedModel(
        [
            turn(
                tool_use("str_replace_based_edit_tool", {"command": "view", "path": "a.txt"}),
                tool_use(
                    "str_replace_based_edit_tool",
                    {"command": "create", "path": "b.txt", "file_text": "beta"},
                ),
            ),
            turn("planned"),
        ]
    )
    permissions = Permissions(mode="plan", cwd=work)
    await make_agent(model, tools=[TextEditorTool()], permissions=permissions).run_until_done(
        "plan"
    )
    viewed, created = last_results(model.requests[1])
    assert "alpha" in viewed["content"] and "is_error" not in viewed
    assert created["is_error"] and "plan mode" in created["content"]
    assert not (work / "b.txt").exists()


# --- hooks -----------------------------------------------------------------------------------


async def test_pre_tool_use_hook_blocks_with_a_reason(make_agent: MakeAgent) -> None:
    tool = EchoTool()
    hooks = Hooks()
    hooks.add("PreToolUse", lambda i: PreToolUseOutput(block="no echoing secrets"), tool="echo")
    model = ScriptedModel([turn(echo("secret")), turn("ok")])
    events = await collect(make_agent(model, tools=[tool], hooks=hooks).run("leak"))
    (blocked,) = last_results(model.requests[1])
    assert blocked["is_error"] and blocked["content"].endswith("denied: no echoing secrets")
    assert tool.calls == []
    decision = next(e for e in events if isinstance(e, PermissionDecided))
    assert (decision.action, decision.by) == ("deny", "hook")


async def test_pre_tool_use_hook_modifies_the_input(make_agent: MakeAgent) -> None:
    tool = EchoTool()
    seen: list[PreToolUseInput] = []

    async def redact(hook_input: PreToolUseInput) -> PreToolUseOutput:
        seen.append(hook_input)
        text = hook_input.tool_input["text"].replace("hunter2", "*****")
        return PreToolUseOutput(updated_input={"text": text})

    hooks = Hooks()
    hooks.add("PreToolUse", redact)
    hooks.add("PreToolUse", lambda i: PreToolUseOutput(block="never"), tool="other_tool")
    model = ScriptedModel([turn(echo("pw hunter2")), turn("ok")])
    events = await collect(make_agent(model, tools=[tool], hooks=hooks).run("say it"))
    assert tool.calls == [{"text": "pw *****"}]
    assert last_results(model.requests[1])[0]["content"] == "pw *****"
    call = next(e for e in events if isinstance(e, ToolCall))
    assert call.modified and call.input == {"text": "pw *****"}
    assert (seen[0].tool_name, seen[0].turn, seen[0].tool_input) == (
        "echo",
        1,
        {"text": "pw hunter2"},
    )


async def test_post_tool_use_hook_replaces_and_annotates_the_result(
    make_agent: MakeAgent,
) -> None:
    hooks = Hooks()
    hooks.add(
        "PostToolUse",
        lambda i: PostToolUseOutput(updated_result=ToolResult(i.result.content.upper())),  # type: ignore[union-attr]
    )
    hooks.add("PostToolUse", lambda i: PostToolUseOutput(annotation="[linted: fine]"))
    seen: list[PostToolUseInput] = []
    hooks.add("PostToolUse", lambda i: seen.append(i))  # type: ignore[func-returns-value]
    model = ScriptedModel([turn(echo("quiet")), turn("ok")])
    await make_agent(model, tools=[EchoTool()], hooks=hooks).run_until_done("shout")
    assert last_results(model.requests[1])[0]["content"] == "QUIET\n\n[linted: fine]"
    assert seen[0].result.content == "QUIET"  # later hooks see the result as changed


async def test_stop_hook_continues_the_run_once(make_agent: MakeAgent) -> None:
    seen: list[StopInput] = []

    def not_yet(hook_input: StopInput) -> StopOutput:
        seen.append(hook_input)
        return StopOutput(continue_with="Run the tests before you stop.")

    hooks = Hooks()
    hooks.add("Stop", not_yet)
    model = ScriptedModel([turn("Done."), turn("Tests pass. Done.")])
    result = await make_agent(model, hooks=hooks).run_until_done("work")
    assert result.ok and result.text == "Tests pass. Done." and result.turns == 2
    assert model.requests[1].messages[-1]["content"][0]["text"] == (
        "Run the tests before you stop."
    )
    assert [(s.final_text, s.stop_hook_active) for s in seen] == [
        ("Done.", False),
        ("Tests pass. Done.", True),  # asked again, but a second veto is not honoured
    ]


async def test_a_hook_can_stop_the_run(make_agent: MakeAgent) -> None:
    tool = EchoTool()
    hooks = Hooks()
    hooks.add("PreToolUse", lambda i: PreToolUseOutput(stop_run="budget meeting"))
    model = ScriptedModel([turn(echo("a"), echo("b")), turn("never asked")])
    agent = make_agent(model, tools=[tool], hooks=hooks)
    result = await agent.run_until_done("go")
    assert (result.reason, result.message) == ("hook", "budget meeting")
    assert tool.calls == [] and len(model.requests) == 1
    # Both calls got an answer, so the saved conversation is whole.
    assert [r["is_error"] for r in agent.messages[-1]["content"]] == [True, True]


async def test_a_failing_hook_ends_the_run_with_an_error(make_agent: MakeAgent) -> None:
    def broken(hook_input: PreToolUseInput) -> None:
        raise RuntimeError("hook bug")

    hooks = Hooks()
    hooks.add("PreToolUse", broken)
    tool = EchoTool()
    model = ScriptedModel([turn(echo("a")), turn("ok")])
    result = await make_agent(model, tools=[tool], hooks=hooks).run_until_done("go")
    assert result.reason == "error" and "hook bug" in result.message
    assert tool.calls == []


# --- stop reasons ----------------------------------------------------------------------------


async def test_pause_turn_resends_and_the_reply_continues(make_agent: MakeAgent) -> None:
    model = ScriptedModel([turn("Searching", stop_reason="pause_turn"), turn(" and found.")])
    agent = make_agent(model)
    result = await agent.run_until_done("search")
    assert result.ok and result.text == "Searching and found."
    assert model.requests[1].messages[-1]["role"] == "assistant"  # resent as it was
    assert [m["role"] for m in agent.messages] == ["user", "assistant"]


async def test_max_tokens_continues_then_stops(make_agent: MakeAgent) -> None:
    cut = turn("lorem ipsum", stop_reason="max_tokens")
    model = ScriptedModel([cut, turn("done")])
    result = await make_agent(model).run_until_done("write")
    assert result.ok
    assert "cut off at the max_tokens limit" in model.requests[1].messages[-1]["content"][0]["text"]

    model = ScriptedModel([cut] * 5)
    result = await make_agent(model, max_continuations=2).run_until_done("write")
    assert (result.reason, len(model.requests)) == ("max_tokens", 3)


async def test_a_tool_call_cut_by_max_tokens_is_not_run(make_agent: MakeAgent) -> None:
    tool = EchoTool()
    model = ScriptedModel(
        [turn(echo("whole"), echo("hal"), stop_reason="max_tokens"), turn("done")]
    )
    await make_agent(model, tools=[tool]).run_until_done("go")
    assert tool.calls == [{"text": "whole"}]
    whole, cut = last_results(model.requests[1])
    assert "is_error" not in whole and cut["is_error"]
    assert "cut off at max_tokens" in cut["content"]


async def test_refusal_ends_the_run(make_agent: MakeAgent) -> None:
    model = ScriptedModel([turn("I can't help with that.", stop_reason="refusal")])
    result = await make_agent(model).run_until_done("something bad")
    assert (result.reason, result.message) == ("refusal", "I can't help with that.")


async def test_a_model_failure_is_an_error_result(make_agent: MakeAgent) -> None:
    model = ScriptedModel([turn(echo("x"))])  # the second call finds the script exhausted
    result = await make_agent(model, tools=[EchoTool()]).run_until_done("go")
    assert result.reason == "error" and "ScriptExhausted" in result.message
    assert result.turns == 2


# --- interrupts ------------------------------------------------------------------------------


async def test_interrupt_between_tools_answers_the_rest_and_stops(make_agent: MakeAgent) -> None:
    model = ScriptedModel([turn(echo("1"), echo("2"), echo("3")), turn("never")])
    tool = EchoTool()
    agent = make_agent(model, tools=[tool])
    events = []
    async for event in agent.run("go"):
        events.append(event)
        if isinstance(event, ToolFinished):
            agent.interrupt()
    result = result_of(events)
    assert result.reason == "interrupted"
    assert tool.calls == [{"text": "1"}]
    results = agent.messages[-1]["content"]
    assert [r.get("is_error", False) for r in results] == [False, True, True]
    assert "interrupted by the user" in results[1]["content"]


async def test_interrupt_during_streaming_stops_the_reply(make_agent: MakeAgent) -> None:
    model = ScriptedModel([turn("one two three four five")])
    agent = make_agent(model)
    events = []
    async for event in agent.run("talk"):
        events.append(event)
        if isinstance(event, TextDelta):
            agent.interrupt()
    assert sum(isinstance(e, TextDelta) for e in events) == 1
    assert result_of(events).reason == "interrupted"


async def test_closing_the_iterator_saves_an_interrupted_result(make_agent: MakeAgent) -> None:
    from tercet.agent import replay

    model = ScriptedModel([forever] * 5)
    agent = make_agent(model, tools=[EchoTool()])
    events = agent.run("go")
    async for event in events:
        if isinstance(event, ToolCall):
            break
    await events.aclose()
    assert agent.session_id is not None
    saved = list(replay(agent.sessions.path(agent.session_id)))
    assert isinstance(saved[-1], Result) and saved[-1].reason == "interrupted"
    # The agent can run again.
    model.replies[1:] = [turn("fine")]
    assert (await agent.run_until_done("again")).ok


# --- requests: caching, thinking, instructions ---------------------------------------------


async def test_cache_breakpoints_mark_tools_system_and_the_latest_messages(
    make_agent: MakeAgent,
) -> None:
    model = ScriptedModel([turn(echo("a")), turn(echo("b")), turn("done")])
    agent = make_agent(model, tools=[BashTool(), EchoTool()])
    await agent.run_until_done("cache me")
    third = model.requests[2]
    assert third.system[-1]["cache_control"] == {"type": "ephemeral"}
    assert "cache_control" not in third.tools[0]
    assert third.tools[-1]["cache_control"] == {"type": "ephemeral"}
    marked = [
        (i, j)
        for i, m in enumerate(third.messages)
        for j, b in enumerate(m["content"])
        if "cache_control" in b
    ]
    # The last block, and where the previous request ended (read back from the cache).
    assert marked == [(2, 0), (4, 0)]
    assert model.requests[1].messages[2]["content"][0]["cache_control"] == {"type": "ephemeral"}
    # The conversation itself carries no markers.
    assert all("cache_control" not in b for m in agent.messages for b in m["content"])


async def test_thinking_is_requested_and_kept_with_its_signature(make_agent: MakeAgent) -> None:
    model = ScriptedModel(
        [
            turn(thinking("I should echo.", "sig-1"), echo("x")),
            turn(thinking("Done now.", "sig-2"), "Echoed."),
        ]
    )
    agent = make_agent(
        model, tools=[EchoTool()], thinking=True, thinking_budget_tokens=2048, max_tokens=4096
    )
    events = await collect(agent.run("think"))
    assert model.requests[0].thinking == {"type": "enabled", "budget_tokens": 2048}
    first_reply = model.requests[1].messages[1]["content"]
    assert first_reply[0] == {
        "type": "thinking",
        "thinking": "I should echo.",
        "signature": "sig-1",
    }
    assert "".join(e.thinking for e in events if isinstance(e, ThinkingDelta)) == (
        "I should echo.Done now."
    )
    with pytest.raises(ValueError, match="thinking_budget_tokens"):
        make_agent(model, thinking=True, thinking_budget_tokens=8192, max_tokens=4096)


async def test_instructions_join_the_system_prompt(
    make_agent: MakeAgent, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "work" / "AGENTS.md").write_text("Always run `make lint`.")
    model = ScriptedModel([turn("ok")])
    await make_agent(model, load_instructions=True, system_prompt="Be brief.").run_until_done("x")
    system = model.requests[0].system[0]["text"]
    assert system.startswith("Be brief.")
    assert "Always run `make lint`." in system and str(tmp_path / "work") in system


async def test_tools_are_closed_with_the_agent(make_agent: MakeAgent) -> None:
    tool = EchoTool()
    agent = make_agent(ScriptedModel([]), tools=[tool])
    async with agent:
        pass
    assert tool.closed


async def test_user_messages_record_the_task(make_agent: MakeAgent) -> None:
    model = ScriptedModel([turn("ok")])
    events = await collect(make_agent(model).run("the task"))
    first = next(e for e in events if isinstance(e, UserMessage))
    assert first.content == [{"type": "text", "text": "the task"}]


async def test_rewind_restores_files_the_editor_changed(
    make_agent: MakeAgent, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    editor = "str_replace_based_edit_tool"
    create = {"command": "create", "path": "notes.md", "file_text": "draft\n"}
    edit = {"command": "str_replace", "path": "notes.md", "old_str": "draft", "new_str": "final"}
    model = ScriptedModel(
        [turn(tool_use(editor, create)), turn(tool_use(editor, edit)), turn("ok")]
    )
    agent = make_agent(model, tools=[TextEditorTool()])
    assert (await agent.run_until_done("write notes")).ok
    assert (work / "notes.md").read_text() == "final\n"
    assert agent.checkpoints is not None and agent.checkpoints.steps() == [1, 2]
    assert agent.rewind(2) == [work / "notes.md"]
    assert (work / "notes.md").read_text() == "draft\n"
    agent.rewind(1)
    assert not (work / "notes.md").exists()


# --- concurrent reads ----------------------------------------------------------------------


class MeetingTool:
    """A tool whose calls record how many of them run at once; with `concurrent_reads` and
    `read_only` its calls may overlap. A call ends once `expected` calls have started (or after
    `patience_s`, so a run that never overlaps still finishes)."""

    name = "meet"

    def __init__(
        self, *, concurrent_reads: bool = True, expected: int = 1, patience_s: float = 2.0
    ) -> None:
        self.concurrent_reads = concurrent_reads
        self.expected = expected
        self.patience_s = patience_s
        self.running = 0
        self.peak = 0
        self.started: list[str] = []

    def definition(self) -> dict[str, Any]:
        return {"name": self.name, "description": "Meet.", "input_schema": {"type": "object"}}

    def is_read_only(self, input: dict[str, Any]) -> bool:
        return not input.get("write")

    def describe(self, input: dict[str, Any]) -> str:
        return f"meet: {input.get('who')}"

    async def run(self, input: dict[str, Any], ctx: Any) -> ToolResult:
        self.started.append(input["who"])
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            for _ in range(round(self.patience_s / 0.01)):
                if len(self.started) >= self.expected:
                    break
                await asyncio.sleep(0.01)
            return ToolResult(f"{input['who']} saw {len(self.started)}")
        finally:
            self.running -= 1

    async def aclose(self) -> None:
        return None


def meet(who: str, **extra: Any) -> dict[str, Any]:
    return tool_use("meet", {"who": who, **extra})


async def test_read_only_calls_run_together_and_answer_in_call_order(
    make_agent: MakeAgent,
) -> None:
    tool = MeetingTool(expected=3)
    model = ScriptedModel([turn(meet("a"), meet("b"), meet("c")), turn("done")])
    events = await collect(make_agent(model, tools=[tool]).run("meet"))

    assert tool.peak == 3
    results = last_results(model.requests[1])
    assert [r["content"] for r in results] == ["a saw 3", "b saw 3", "c saw 3"]
    calls = [e for e in events if isinstance(e, ToolCall | PermissionDecided | ToolFinished)]
    assert [type(e).__name__ for e in calls] == [
        *["ToolCall", "PermissionDecided"] * 3,
        *["ToolFinished"] * 3,
    ]
    finished = [e.tool_use_id for e in calls if isinstance(e, ToolFinished)]
    assert finished == [r["tool_use_id"] for r in results]


@pytest.mark.parametrize(
    ("calls", "peak"),
    [
        ([meet("a"), meet("b", write=True), meet("c")], 1),  # a write runs alone
        ([meet("a"), meet("b"), meet("c", write=True), meet("d"), meet("e")], 2),
    ],
)
async def test_a_writing_call_splits_the_reads_around_it(
    make_agent: MakeAgent, calls: list[dict[str, Any]], peak: int
) -> None:
    tool = MeetingTool(expected=len(calls))
    model = ScriptedModel([turn(*calls), turn("done")])
    await make_agent(model, tools=[tool]).run_until_done("meet")
    assert tool.peak == peak
    assert tool.started == [c["input"]["who"] for c in calls]  # in order, batch by batch


async def test_tools_without_concurrent_reads_run_one_call_at_a_time(
    make_agent: MakeAgent,
) -> None:
    tool = MeetingTool(concurrent_reads=False, expected=2)
    model = ScriptedModel([turn(meet("a"), meet("b")), turn("done")])
    await make_agent(model, tools=[tool]).run_until_done("meet")
    assert tool.peak == 1
    assert [r["content"] for r in last_results(model.requests[1])] == ["a saw 1", "b saw 2"]


async def test_overlapping_calls_are_asked_about_one_at_a_time(
    make_agent: MakeAgent, tmp_path: Path
) -> None:
    tool = MeetingTool(expected=2)
    asked: list[str] = []
    asking = 0

    async def ask(request: PermissionRequest) -> Decision:
        nonlocal asking
        asking += 1
        assert asking == 1, "two permission prompts at once"
        await asyncio.sleep(0.02)
        asked.append(request.description)
        asking -= 1
        return Decision("deny", "no") if "b" in request.description else Decision("allow", "ok")

    permissions = Permissions.from_lists(ask=["meet"], cwd=tmp_path / "work")
    model = ScriptedModel([turn(meet("a"), meet("b"), meet("c")), turn("done")])
    await make_agent(model, tools=[tool], permissions=permissions, ask=ask).run_until_done("go")

    assert asked == ["meet: a", "meet: b", "meet: c"]
    assert (tool.started, tool.peak) == (["a", "c"], 2)
    a, b, c = last_results(model.requests[1])
    assert (a["content"], c["content"]) == ("a saw 2", "c saw 2")
    assert b["is_error"] and b["content"].endswith("denied: no")


async def test_a_read_cut_off_by_max_tokens_is_not_run_beside_the_others(
    make_agent: MakeAgent,
) -> None:
    tool = MeetingTool(expected=2)
    model = ScriptedModel(
        [turn(meet("a"), meet("b"), meet("c"), stop_reason="max_tokens"), turn("done")]
    )
    await make_agent(model, tools=[tool]).run_until_done("go")
    assert (tool.started, tool.peak) == (["a", "b"], 2)
    *_, cut = last_results(model.requests[1])
    assert cut["is_error"] and "cut off at max_tokens" in cut["content"]


def saved_results(agent: Any) -> list[str]:
    """The tool results the session saved last, as text."""
    message = agent.sessions.load(agent.session_id).messages[-1]
    return [b["content"] for b in message["content"] if b["type"] == "tool_result"]


async def test_a_stop_while_reads_run_keeps_the_first_result_only(make_agent: MakeAgent) -> None:
    # As one after another would: a PostToolUse hook that stops after the first call leaves
    # the later calls' results unused (they ran; they are not passed on).
    tool = MeetingTool(expected=3)
    hooks = Hooks()
    hooks.add("PostToolUse", lambda i: PostToolUseOutput(stop_run="secret seen"))
    model = ScriptedModel([turn(meet("a"), meet("b"), meet("c")), turn("never asked")])
    agent = make_agent(model, tools=[tool], hooks=hooks)
    result = await agent.run_until_done("go")
    assert (result.reason, len(model.requests)) == ("hook", 1)
    assert saved_results(agent) == [
        "a saw 3",
        "Its result was not used: secret seen.",
        "Its result was not used: secret seen.",
    ]


async def test_an_interrupt_before_the_reads_run_leaves_them_unrun(make_agent: MakeAgent) -> None:
    tool = MeetingTool(expected=2)
    agent: Any = None

    async def ask(request: PermissionRequest) -> Decision:
        if "b" in request.description:
            agent.interrupt()  # Ctrl-C at the second prompt
        return Decision("allow", "ok")

    permissions = Permissions.from_lists(ask=["meet"], cwd=Path.cwd())
    model = ScriptedModel([turn(meet("a"), meet("b"), meet("c")), turn("never asked")])
    agent = make_agent(model, tools=[tool], permissions=permissions, ask=ask)
    result = await agent.run_until_done("go")
    assert result.reason == "interrupted" and tool.started == []
    assert [r.split(":")[0] for r in saved_results(agent)] == ["Not run"] * 3


async def test_a_call_a_hook_makes_writing_runs_alone_in_its_place(make_agent: MakeAgent) -> None:
    tool = MeetingTool(expected=4, patience_s=0.3)
    hooks = Hooks()

    def make_b_write(i: PreToolUseInput) -> PreToolUseOutput | None:
        return (
            PreToolUseOutput(updated_input={**i.tool_input, "write": True})
            if i.tool_input["who"] == "b"
            else None
        )

    hooks.add("PreToolUse", make_b_write)
    calls = [meet("a"), meet("b"), meet("c"), meet("d")]
    model = ScriptedModel([turn(*calls), turn("done")])
    await make_agent(model, tools=[tool], hooks=hooks).run_until_done("go")
    assert tool.started == ["a", "b", "c", "d"]  # in order: a, then b alone, then c and d
    assert tool.peak == 2  # only c and d overlapped
    assert [r["content"] for r in last_results(model.requests[1])] == [
        "a saw 1",  # waited for the others in vain: it ran before b, alone
        "b saw 2",
        "c saw 4",
        "d saw 4",
    ]


async def test_cancelling_the_run_cancels_every_read_in_flight(make_agent: MakeAgent) -> None:
    tool = MeetingTool(expected=99)  # never met: each call waits its two seconds
    model = ScriptedModel([turn(meet("a"), meet("b")), turn("never asked")])
    agent = make_agent(model, tools=[tool])
    task = asyncio.create_task(agent.run_until_done("go"))
    while tool.running < 2:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert tool.running == 0  # both calls ended with the run, none left behind


async def test_names_that_are_not_utf8_reach_the_model_and_the_trajectory_as_u_fffd(
    make_agent: MakeAgent, tmp_path: Path
) -> None:
    # Python gives such a name lone surrogates, which no request body or UTF-8 file holds.
    work = tmp_path / "work"
    (work / os.fsdecode(b"caf\xe9.txt")).write_text("x")
    view = tool_use("str_replace_based_edit_tool", {"command": "view", "path": "."})
    model = ScriptedModel([turn(view), turn("ok")])
    agent = make_agent(model, tools=[TextEditorTool()])
    result = await agent.run_until_done("look \udcff here")
    assert result.ok, result.message
    (listing,) = last_results(model.requests[1])
    assert "caf\ufffd.txt" in listing["content"]
    saved = agent.sessions.load(result.session_id).messages
    assert saved[0]["content"][0]["text"] == "look \ufffd here"
    assert "caf\ufffd.txt" in saved[2]["content"][0]["content"]


async def test_lone_surrogates_from_the_model_hooks_or_the_cwd_never_end_the_run(
    make_agent: MakeAgent, tmp_path: Path
) -> None:
    cwd = tmp_path / os.fsdecode(b"w\xe9rk")  # a working directory whose name is not UTF-8
    cwd.mkdir()
    hooks = Hooks()
    hooks.add("PreToolUse", lambda i: PreToolUseOutput(block="no \udcff here"), tool="echo")
    hooks.add("Stop", lambda i: StopOutput(stop_run="done \ud800 now"))
    model = ScriptedModel([turn(echo("caf\udce9")), turn("ok")])  # JSON may carry "\\udce9"
    agent = make_agent(model, tools=[EchoTool()], hooks=hooks, cwd=cwd)
    result = await agent.run_until_done("go")
    assert (result.reason, result.message) == ("hook", "done \ufffd now")
    session = agent.sessions.load(result.session_id)  # the trajectory holds every record
    assert session.header.cwd.endswith("w\ufffdrk")
    (blocked,) = last_results(model.requests[1])
    assert blocked["content"].endswith("no \ufffd here")
    assert session.messages[1]["content"][0]["input"] == {"text": "caf\ufffd"}
