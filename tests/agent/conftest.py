"""Helpers for the agent loop's tests: an agent on a scripted model, in tmp_path."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tercet.agent import (
    Agent,
    AgentConfig,
    Event,
    Model,
    Permissions,
    Result,
    ToolContext,
    ToolResult,
)

MakeAgent = Callable[..., Agent]
# Repositories the agent works on in tests; their tests are the agent's to run, not pytest's.
collect_ignore_glob = ["fixtures/*"]


@pytest.fixture
async def make_agent(tmp_path: Path) -> AsyncIterator[MakeAgent]:
    """`make_agent(model, **config)`: an agent working in tmp_path/work, its sessions in
    tmp_path/sessions, every call allowed unless `permissions` says otherwise, no
    instruction files. Its tools are closed after the test."""
    agents: list[Agent] = []
    work = tmp_path / "work"
    work.mkdir()

    def make(model: Model, /, **settings: Any) -> Agent:
        settings.setdefault("cwd", work)
        settings.setdefault("sessions_dir", tmp_path / "sessions")
        settings.setdefault("load_instructions", False)
        settings.setdefault("permissions", Permissions(mode="bypassPermissions", cwd=work))
        agent = Agent(model, AgentConfig(**settings))
        agents.append(agent)
        return agent

    yield make
    for agent in agents:
        await agent.aclose()


async def collect(events: AsyncIterator[Event]) -> list[Event]:
    return [event async for event in events]


def result_of(events: list[Event]) -> Result:
    assert isinstance(events[-1], Result), events[-1]
    return events[-1]


class EchoTool:
    """A tool that answers with its input's `text`, after `delay` seconds; `calls` records."""

    name = "echo"

    def __init__(self, delay: float = 0.0, read_only: bool = True) -> None:
        self.delay = delay
        self.read_only = read_only
        self.calls: list[dict[str, Any]] = []
        self.closed = False

    def definition(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": "Echo text back.",
            "input_schema": {"type": "object", "properties": {"text": {"type": "string"}}},
        }

    def is_read_only(self, input: dict[str, Any]) -> bool:
        return self.read_only

    def describe(self, input: dict[str, Any]) -> str:
        return f"echo: {input.get('text')}"

    async def run(self, input: dict[str, Any], ctx: ToolContext) -> ToolResult:
        self.calls.append(input)
        if self.delay:
            await asyncio.sleep(self.delay)
        if input.get("fail"):
            raise OSError("the echo chamber collapsed")
        return ToolResult(str(input.get("text", "")))

    async def aclose(self) -> None:
        self.closed = True
