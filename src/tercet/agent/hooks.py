"""Hooks: typed callbacks the loop calls before a tool, after a tool, on stop and before a
compaction; and the `ask` callback that answers permission prompts.

    hooks = Hooks()
    hooks.add("PreToolUse", no_rm, tool="bash")   # only bash calls
    hooks.add("Stop", run_tests_first)

A callback takes the event's input and returns its output, or None for "carry on"; it may be
a coroutine function. Callbacks run in the order they were added. An exception in a hook ends
the run with reason "error" (a hook that guards something fails closed). Any output with
`stop_run` set ends the run with reason "hook" and that message.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal, TypeVar, overload

from tercet.agent.permissions import Decision
from tercet.agent.tools.base import ToolResult

HookEvent = Literal["PreToolUse", "PostToolUse", "Stop", "PreCompact"]
HOOK_EVENTS: tuple[HookEvent, ...] = ("PreToolUse", "PostToolUse", "Stop", "PreCompact")


@dataclass(frozen=True)
class PreToolUseInput:
    """A tool call the model made, before permissions are checked."""

    event: ClassVar[Literal["PreToolUse"]] = "PreToolUse"
    session_id: str
    turn: int
    tool_name: str
    tool_use_id: str
    tool_input: dict[str, Any]


@dataclass(frozen=True)
class PreToolUseOutput:
    """`block`: refuse the call (the model reads this reason in an is_error result).
    `updated_input`: run the call with this input instead (permissions then judge it)."""

    block: str | None = None
    updated_input: dict[str, Any] | None = None
    stop_run: str | None = None


@dataclass(frozen=True)
class PostToolUseInput:
    """A tool call that ran, and its result."""

    event: ClassVar[Literal["PostToolUse"]] = "PostToolUse"
    session_id: str
    turn: int
    tool_name: str
    tool_use_id: str
    tool_input: dict[str, Any]
    result: ToolResult


@dataclass(frozen=True)
class PostToolUseOutput:
    """`updated_result`: what the model reads instead; `annotation`: text added after the
    result (for example a linter's verdict on an edit)."""

    updated_result: ToolResult | None = None
    annotation: str | None = None
    stop_run: str | None = None


@dataclass(frozen=True)
class StopInput:
    """The model answered without calling a tool. `stop_hook_active`: a Stop hook has already
    sent it back to work once in this run (a second veto is ignored)."""

    event: ClassVar[Literal["Stop"]] = "Stop"
    session_id: str
    turn: int
    final_text: str
    stop_hook_active: bool


@dataclass(frozen=True)
class StopOutput:
    """`continue_with`: do not stop; send the model this message and go on (once a run)."""

    continue_with: str | None = None
    stop_run: str | None = None


@dataclass(frozen=True)
class PreCompactInput:
    """The conversation is about to be summarised to make room (`prompt_tokens` of
    `context_window` used by the last request)."""

    event: ClassVar[Literal["PreCompact"]] = "PreCompact"
    session_id: str
    turn: int
    prompt_tokens: int
    context_window: int
    message_count: int


@dataclass(frozen=True)
class PreCompactOutput:
    """`instructions`: added to the summarisation request (what the summary must keep)."""

    instructions: str | None = None
    stop_run: str | None = None


In = TypeVar("In")
Out = TypeVar("Out")
Hook = Callable[[In], Out | Awaitable[Out | None] | None]
PreToolUseHook = Hook[PreToolUseInput, PreToolUseOutput]
PostToolUseHook = Hook[PostToolUseInput, PostToolUseOutput]
StopHook = Hook[StopInput, StopOutput]
PreCompactHook = Hook[PreCompactInput, PreCompactOutput]


@dataclass(frozen=True)
class PermissionRequest:
    """A call the permission rules want the user to approve; `reason` says which rule asks."""

    tool_name: str
    tool_use_id: str
    input: dict[str, Any]
    description: str
    reason: str


# Answers a permission prompt: Decision("allow", ...) runs the call; anything else refuses
# it, and a refusal's reason is what the model reads.
AskCallback = Callable[[PermissionRequest], Awaitable[Decision]]


class Hooks:
    """The hooks of an agent, by event. `tool` restricts a tool hook to one tool's calls."""

    def __init__(self) -> None:
        self.pre_tool_use: list[tuple[str | None, PreToolUseHook]] = []
        self.post_tool_use: list[tuple[str | None, PostToolUseHook]] = []
        self.stop: list[StopHook] = []
        self.pre_compact: list[PreCompactHook] = []

    @overload
    def add(
        self, event: Literal["PreToolUse"], hook: PreToolUseHook, *, tool: str | None = None
    ) -> None: ...
    @overload
    def add(
        self, event: Literal["PostToolUse"], hook: PostToolUseHook, *, tool: str | None = None
    ) -> None: ...
    @overload
    def add(self, event: Literal["Stop"], hook: StopHook) -> None: ...
    @overload
    def add(self, event: Literal["PreCompact"], hook: PreCompactHook) -> None: ...

    def add(self, event: HookEvent, hook: Any, *, tool: str | None = None) -> None:
        """Call `hook` on `event` (for tool events, only for `tool`'s calls if given)."""
        if event == "PreToolUse":
            self.pre_tool_use.append((tool, hook))
        elif event == "PostToolUse":
            self.post_tool_use.append((tool, hook))
        elif event == "Stop":
            self.stop.append(hook)
        elif event == "PreCompact":
            self.pre_compact.append(hook)
        else:
            raise ValueError(f"unknown hook event {event!r}; one of {', '.join(HOOK_EVENTS)}")

    async def run_pre_tool_use(self, input: PreToolUseInput) -> PreToolUseOutput:
        """Every matching hook in turn, each seeing the input as the previous one left it;
        the first to block or stop decides."""
        updated: dict[str, Any] | None = None
        for tool, hook in self.pre_tool_use:
            if tool is not None and tool != input.tool_name:
                continue
            output = await _call(hook, input)
            if output is None:
                continue
            if output.block is not None or output.stop_run is not None:
                return output
            if output.updated_input is not None:
                updated = output.updated_input
                input = replace(input, tool_input=updated)
        return PreToolUseOutput(updated_input=updated)

    async def run_post_tool_use(self, input: PostToolUseInput) -> PostToolUseOutput:
        """Every matching hook in turn, each seeing the result as the previous one left it;
        annotations are gathered."""
        result, notes = input.result, []
        for tool, hook in self.post_tool_use:
            if tool is not None and tool != input.tool_name:
                continue
            output = await _call(hook, replace(input, result=result))
            if output is None:
                continue
            if output.stop_run is not None:
                return output
            result = output.updated_result or result
            if output.annotation:
                notes.append(output.annotation)
        changed = result if result is not input.result else None
        return PostToolUseOutput(changed, "\n".join(notes) or None)

    async def run_stop(self, input: StopInput) -> StopOutput:
        """The first hook that vetoes or stops decides."""
        for hook in self.stop:
            output = await _call(hook, input)
            if output is not None and (output.continue_with or output.stop_run):
                return output
        return StopOutput()

    async def run_pre_compact(self, input: PreCompactInput) -> PreCompactOutput:
        """Instructions of every hook, joined; the first that stops decides."""
        notes = []
        for hook in self.pre_compact:
            output = await _call(hook, input)
            if output is None:
                continue
            if output.stop_run is not None:
                return output
            if output.instructions:
                notes.append(output.instructions)
        return PreCompactOutput("\n".join(notes) or None)


async def _call(hook: Hook[In, Out], input: In) -> Out | None:
    output = hook(input)
    if inspect.isawaitable(output):
        return await output
    return output
