"""What every agent tool is: a definition for the model, a permission profile, and `run`.

A tool never raises for what the model asked of it: a bad path, a missing string or a failed
command is a `ToolResult` with `is_error`, which the loop sends back as the `tool_result`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tercet.agent.checkpoints import Checkpoints


@dataclass
class ToolResult:
    """What a tool call returns: the `tool_result` block's content and its `is_error` flag."""

    content: str | list[dict[str, Any]]
    is_error: bool = False


@dataclass
class ToolContext:
    """Where a call runs: the working directory, and the checkpoints that record file edits
    before they happen (as of the loop's `step`)."""

    cwd: Path
    checkpoints: Checkpoints | None = None
    step: int = 0


class AgentTool(Protocol):
    """A tool the agent offers the model and runs on its behalf.

    A tool may also set `concurrent_reads = True`: its read-only calls (`is_read_only`) may
    then run beside other such calls of the same reply. Without it, every call runs alone.
    """

    name: str

    def definition(self) -> dict[str, Any]:
        """The entry for the Messages API `tools` list."""
        ...

    def is_read_only(self, input: dict[str, Any]) -> bool:
        """Whether this call only reads (so it is allowed without asking, even in plan mode)."""
        ...

    def describe(self, input: dict[str, Any]) -> str:
        """A one-line summary of the call for permission prompts, e.g. `bash: pytest -q`."""
        ...

    async def run(self, input: dict[str, Any], ctx: ToolContext) -> ToolResult:
        """Carry out the call; failures the model caused come back as `is_error` results."""
        ...

    async def aclose(self) -> None:
        """Release what the tool holds (a shell, a connection)."""
        ...


class ToolInputError(Exception):
    """The model's input cannot be carried out; the message is what the model reads."""


def resolve_path(cwd: Path, raw: object) -> Path:
    """A path from the model's input, absolute or relative to `cwd`, made absolute (not
    resolved through symlinks, so that the model sees the path it asked for)."""
    if not isinstance(raw, str) or not raw:
        raise ToolInputError("Parameter `path` is required and must be a non-empty string.")
    path = Path(raw).expanduser()
    return Path(os.path.normpath(cwd / path))


def one_line(text: str, limit: int = 200) -> str:
    """`text` on one line and at most `limit` characters, for prompts and logs."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
