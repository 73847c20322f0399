"""The code execution server tool: what the model is offered, and running its calls.

`code_execution_20250825` offers two sub-tools, `bash_code_execution` and
`text_editor_code_execution`; `code_execution_20250522` offers `code_execution` (Python). The
server runs each call in the request's container (`tercet.sandbox`) and answers with the
result block Anthropic defines, errors included: a failed execution is a result, never a
failed request.
"""

from __future__ import annotations

import mimetypes
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tercet.files.store import FileStore
from tercet.sandbox.containers import OUTPUTS, Container, ContainerError, ContainerManager
from tercet.sandbox.runner import ExecResult, SandboxUnavailable, unavailable_reason
from tercet.wire.content import ContainerUploadBlockParam, ServerToolResultBlock
from tercet.wire.requests import BuiltinToolParam, CustomToolParam, ToolParam
from tercet.wire.responses import Container as ContainerInfo

_STRING = {"type": "string"}
BASH = CustomToolParam(
    name="bash_code_execution",
    description=(
        "Run a bash command in a sandboxed Linux container (no network). The working "
        "directory /workspace persists between calls; files written to /workspace/outputs "
        "are handed back to the user. Python 3 with numpy, pandas and matplotlib is installed."
    ),
    input_schema={"type": "object", "properties": {"command": _STRING}, "required": ["command"]},
)
EDITOR = CustomToolParam(
    name="text_editor_code_execution",
    description=(
        "View, create or edit a text file in the container's /workspace. Commands: view, "
        "create (file_text), str_replace (old_str must occur exactly once, new_str)."
    ),
    input_schema={
        "type": "object",
        "properties": {
            "command": {"type": "string", "enum": ["view", "create", "str_replace"]},
            "path": _STRING,
            "file_text": _STRING,
            "old_str": _STRING,
            "new_str": _STRING,
        },
        "required": ["command", "path"],
    },
)
PYTHON = CustomToolParam(
    name="code_execution",
    description=(
        "Run Python 3 code in a sandboxed container (no network; numpy, pandas and "
        "matplotlib installed). Print what you want to see. Files written to "
        "/workspace/outputs are handed back to the user."
    ),
    input_schema={"type": "object", "properties": {"code": _STRING}, "required": ["code"]},
)
TOOL_TYPES: dict[str, list[CustomToolParam]] = {
    "code_execution_20250825": [BASH, EDITOR],
    "code_execution_20250522": [PYTHON],
}
SERVER_TOOL_NAMES = frozenset(t.name for tools in TOOL_TYPES.values() for t in tools)
RESULT_TYPES = {
    "bash_code_execution": "bash_code_execution_tool_result",
    "text_editor_code_execution": "text_editor_code_execution_tool_result",
    "code_execution": "code_execution_tool_result",
}


def code_execution_tools(tools: Sequence[ToolParam] | None) -> list[CustomToolParam]:
    """The sub-tools of the code execution tool types in `tools`, as the model is offered them."""
    offered: list[CustomToolParam] = []
    for tool in tools or ():
        if isinstance(tool, BuiltinToolParam) and tool.type in TOOL_TYPES:
            offered += [t for t in TOOL_TYPES[tool.type] if t not in offered]
    return offered


class CodeExecutor:
    """Runs code execution calls for one server: containers, uploads and outputs."""

    def __init__(self, containers: ContainerManager, files: FileStore) -> None:
        self.containers = containers
        self.files = files

    def container(self, requested: str | dict[str, Any] | None) -> Container | ContainerError:
        """The request's container: the one it names, or a new one."""
        wanted = requested.get("id") if isinstance(requested, dict) else requested
        try:
            return self.containers.get(wanted) if wanted else self.containers.create()
        except ContainerError as error:
            return error

    def info(self, container: Container) -> ContainerInfo:
        expires = datetime.fromtimestamp(container.expires_at(self.containers.limits), UTC)
        return ContainerInfo(id=container.id, expires_at=expires.isoformat().replace("+00:00", "Z"))

    def upload(self, container: Container, block: ContainerUploadBlockParam, owner: str) -> None:
        """Place a Files API file in the workspace, under its own name."""
        stored = self.files.get(owner, block.file_id)
        if stored is None:
            return
        target = _inside(container.workspace, Path(stored.filename).name or stored.id)
        if target is None:
            return
        with target.open("wb") as sink:
            for chunk in self.files.read(stored):
                sink.write(chunk)
        _give(target, container)

    def execute(
        self,
        container: Container | ContainerError,
        name: str,
        tool_use_id: str,
        arguments: dict[str, Any],
        owner: str,
    ) -> ServerToolResultBlock:
        """Run one call; every failure is a result block with Anthropic's error code."""
        kind = RESULT_TYPES[name]
        prefix = kind.removesuffix("_tool_result")

        def error(code: str) -> ServerToolResultBlock:
            return ServerToolResultBlock(
                type=kind,
                tool_use_id=tool_use_id,
                content={"type": f"{prefix}_tool_result_error", "error_code": code},
            )

        if isinstance(container, ContainerError):
            return error(container.code)
        if unavailable_reason() is not None:
            return error("unavailable")
        try:
            if name == "text_editor_code_execution":
                content = _edit(container, arguments)
                if isinstance(content, str):
                    return error(content)
                return ServerToolResultBlock(type=kind, tool_use_id=tool_use_id, content=content)
            before = _outputs(container)
            if name == "code_execution":
                code = arguments.get("code")
                if not isinstance(code, str):
                    return error("invalid_tool_input")
                result = self.containers.run(container, ["python", "-"], stdin=code.encode())
            else:
                command = arguments.get("command")
                if not isinstance(command, str):
                    return error("invalid_tool_input")
                result = self.containers.run(container, ["/bin/bash", "-c", command])
        except ContainerError as failure:
            return error(failure.code)
        except (SandboxUnavailable, OSError):
            return error("unavailable")
        if result.timed_out:
            return error("execution_time_exceeded")
        outputs = self._collect_outputs(container, before, owner)
        return ServerToolResultBlock(
            type=kind,
            tool_use_id=tool_use_id,
            content=_run_result(prefix, result, outputs),
        )

    def _collect_outputs(
        self, container: Container, before: dict[str, tuple[int, int]], owner: str
    ) -> list[str]:
        """New or changed files in outputs/ become downloadable Files API files."""
        file_ids = []
        for name, stamp in _outputs(container).items():
            if before.get(name) == stamp:
                continue
            path = container.workspace / OUTPUTS / name
            writer = self.files.begin()
            try:
                with path.open("rb") as source:
                    while chunk := source.read(1 << 20):
                        writer.write(chunk)
            except OSError:
                writer.discard()
                continue
            mime = _mime_type(name)
            file_ids.append(self.files.commit(owner, writer, name, mime, True).id)
        return file_ids


def _run_result(prefix: str, result: ExecResult, outputs: list[str]) -> dict[str, Any]:
    return {
        "type": f"{prefix}_result",
        "stdout": result.stdout,
        "stderr": result.stderr,
        "return_code": result.return_code,
        "content": [{"type": f"{prefix}_output", "file_id": f} for f in outputs],
    }


def _edit(container: Container, arguments: dict[str, Any]) -> dict[str, Any] | str:
    """The text editor, on the host but confined to the workspace (links are not followed
    out of it). Returns the result content, or an error code."""
    command, path = arguments.get("command"), arguments.get("path")
    if not isinstance(path, str) or command not in ("view", "create", "str_replace"):
        return "invalid_tool_input"
    target = _inside(container.workspace, path.removeprefix("/workspace/").lstrip("/"))
    if target is None:
        return "invalid_tool_input"
    if command == "create":
        text = arguments.get("file_text")
        if not isinstance(text, str):
            return "invalid_tool_input"
        existed = target.exists()
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        _give(target, container)
        return {"type": "text_editor_code_execution_create_result", "is_file_update": existed}
    if not target.is_file():
        return "file_not_found"
    text = target.read_text(errors="replace")
    if command == "view":
        lines = text.splitlines()
        return {
            "type": "text_editor_code_execution_view_result",
            "file_type": "text",
            "content": text,
            "num_lines": len(lines),
            "start_line": 1,
            "total_lines": len(lines),
        }
    old, new = arguments.get("old_str"), arguments.get("new_str", "")
    if not isinstance(old, str) or not isinstance(new, str) or not old:
        return "invalid_tool_input"
    if text.count(old) != 1:
        return "string_not_found"
    start = text[: text.index(old)].count("\n") + 1
    target.write_text(text.replace(old, new, 1))
    old_lines, new_lines = old.splitlines(), new.splitlines()
    return {
        "type": "text_editor_code_execution_str_replace_result",
        "old_start": start,
        "old_lines": len(old_lines),
        "new_start": start,
        "new_lines": len(new_lines),
        "lines": [f"-{line}" for line in old_lines] + [f"+{line}" for line in new_lines],
    }


def _inside(workspace: Path, relative: str) -> Path | None:
    """`relative` under `workspace`, or None if it (or a link on the way) leads out of it."""
    root = workspace.resolve()
    target = (root / relative).resolve()
    return target if target == root or root in target.parents else None


def _outputs(container: Container) -> dict[str, tuple[int, int]]:
    folder = container.workspace / OUTPUTS
    stamps = {}
    for entry in os.scandir(folder) if folder.is_dir() else ():
        if entry.is_file(follow_symlinks=False):
            info = entry.stat(follow_symlinks=False)
            stamps[entry.name] = (info.st_size, info.st_mtime_ns)
    return stamps


def _give(path: Path, container: Container) -> None:
    """Files the server writes for a container belong to the container's user."""
    if os.geteuid() == 0:
        os.chown(path, container.uid, container.uid)


def _mime_type(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"
