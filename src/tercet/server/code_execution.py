"""The code execution server tool: what the model is offered, and running its calls.

`code_execution_20250825` offers two sub-tools, `bash_code_execution` and
`text_editor_code_execution`; `code_execution_20250522` offers `code_execution` (Python). The
server runs each call in the request's container (`tercet.sandbox`) and answers with the
result block Anthropic defines, errors included: a failed execution is a result, never a
failed request.
"""

from __future__ import annotations

import logging
import mimetypes
import os
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tercet.files.store import FileStore, QuotaExceededError
from tercet.sandbox.containers import OUTPUTS, Container, ContainerError, ContainerManager
from tercet.sandbox.runner import ExecResult, SandboxUnavailable, unavailable_reason
from tercet.sandbox.workspace_files import (
    NotInWorkspace,
    directory_beneath,
    open_regular,
    parts_of,
)
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
MAX_EDITED_BYTES = 4 * 1024 * 1024  # the most the text editor reads of one file
log = logging.getLogger(__name__)
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
    """Runs code execution calls for one server: containers, uploads and outputs.

    Containers belong to the API key that made them. The server reads and writes workspaces
    as its own user while the container's code may still be changing them, so every file is
    reached through `tercet.sandbox.workspace_files` (no link followed, regular files only).
    """

    def __init__(
        self, containers: ContainerManager, files: FileStore, file_quota_bytes: int | None = None
    ) -> None:
        self.containers = containers
        self.files = files
        self.file_quota_bytes = file_quota_bytes  # outputs count against the key's storage

    def container(self, requested: object, owner: str) -> Container | ContainerError:
        """The request's container: the one it names (if `owner`'s), or a new one."""
        wanted = requested.get("id") if isinstance(requested, dict) else requested
        try:
            if isinstance(wanted, str) and wanted:
                return self.containers.get(wanted, owner)
            if wanted:  # `{"id": 5}`, `{"id": ["x"]}`: no container (the manager keys on str)
                raise ContainerError("unavailable", "a container id is a string")
            return self.containers.create(owner=owner)
        except ContainerError as error:
            return error

    def info(self, container: Container) -> ContainerInfo:
        expires = datetime.fromtimestamp(container.expires_at(self.containers.limits), UTC)
        return ContainerInfo(id=container.id, expires_at=expires.isoformat().replace("+00:00", "Z"))

    def upload(self, container: Container, block: ContainerUploadBlockParam, owner: str) -> None:
        """Place a Files API file in the workspace, under its own name. Where the code has put
        something else under that name (a directory, a link), the file is left out: the
        code's own doing, and the model will find it missing."""
        stored = self.files.get(owner, block.file_id)
        if stored is None:
            return
        name = Path(stored.filename).name or stored.id
        try:
            with directory_beneath(container.workspace, []) as root:
                fd = open_regular(name, root, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
                with os.fdopen(fd, "wb") as sink:
                    if os.geteuid() == 0:
                        os.fchown(sink.fileno(), container.uid, container.uid)
                    for chunk in self.files.read(stored):
                        sink.write(chunk)
        except (OSError, ValueError) as exc:
            log.info("upload of %s into %s left out: %s", stored.id, container.id, exc)

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
            return error_result(name, tool_use_id, code)

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
        except (NotInWorkspace, ValueError):  # a link, a FIFO, a NUL, text that cannot be saved
            return error("invalid_tool_input")
        except (SandboxUnavailable, OSError) as failure:
            # The caller sees only `unavailable`; the operator needs the reason.
            log.warning("code execution unavailable: %r", failure)
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
        """New or changed regular files in outputs/ become downloadable Files API files."""
        file_ids = []
        try:
            with directory_beneath(container.workspace, [OUTPUTS]) as folder:
                for name, stamp in _stamps(folder).items():
                    if before.get(name) == stamp:
                        continue
                    file_id = self._store_output(folder, name, owner)
                    if file_id is not None:
                        file_ids.append(file_id)
        except OSError:  # no outputs/ (removed, or replaced by a link): nothing to hand back
            pass
        return file_ids

    def _store_output(self, folder: int, name: str, owner: str) -> str | None:
        writer = self.files.begin()
        try:
            with os.fdopen(open_regular(name, folder, os.O_RDONLY), "rb") as source:
                while chunk := source.read(1 << 20):
                    writer.write(chunk)
        except OSError:
            writer.discard()
            return None
        try:
            stored = self.files.commit(
                owner, writer, name, _mime_type(name), True, self.file_quota_bytes
            )
        except QuotaExceededError:
            log.info("output %s not kept: the owner's storage quota is full", name)
            return None
        return stored.id


def error_result(
    name: str, tool_use_id: str, code: str, message: str | None = None
) -> ServerToolResultBlock:
    """The error result of a call of sub-tool `name`: Anthropic's shape, with its error code;
    `message` (tercet's own field, `error_message`) says more where a code cannot."""
    kind = RESULT_TYPES[name]
    content: dict[str, Any] = {
        "type": f"{kind.removesuffix('_tool_result')}_tool_result_error",
        "error_code": code,
    }
    if message is not None:
        content["error_message"] = message
    return ServerToolResultBlock(type=kind, tool_use_id=tool_use_id, content=content)


def _run_result(prefix: str, result: ExecResult, outputs: list[str]) -> dict[str, Any]:
    return {
        "type": f"{prefix}_result",
        "stdout": result.stdout,
        "stderr": result.stderr,
        "return_code": result.return_code,
        "content": [{"type": f"{prefix}_output", "file_id": f} for f in outputs],
    }


def only_reads(name: str, arguments: Mapping[str, Any]) -> bool:
    """Whether a code-execution call only reads the container: the text editor's `view`
    (bash may do anything)."""
    return name == "text_editor_code_execution" and arguments.get("command") == "view"


def _edit(container: Container, arguments: dict[str, Any]) -> dict[str, Any] | str:
    """The text editor, run on the host but confined to the workspace (see `workspace_files`).
    Returns the result content, or an error code."""
    command, path = arguments.get("command"), arguments.get("path")
    if not isinstance(path, str) or command not in ("view", "create", "str_replace"):
        return "invalid_tool_input"
    *folders, name = parts_of(path.removeprefix("/workspace/"))
    if command == "create":
        text = arguments.get("file_text")
        if not isinstance(text, str):
            return "invalid_tool_input"
        data = text.encode()  # before anything is created: a lone surrogate cannot be saved
        uid = container.uid if os.geteuid() == 0 else None
        with directory_beneath(container.workspace, folders, create=True, uid=uid) as folder:
            existed = _exists(name, folder)
            fd = open_regular(name, folder, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            with os.fdopen(fd, "wb") as sink:
                if uid is not None:
                    os.fchown(sink.fileno(), uid, uid)
                sink.write(data)
        return {"type": "text_editor_code_execution_create_result", "is_file_update": existed}
    try:
        with directory_beneath(container.workspace, folders) as folder:
            return _read_or_replace(folder, name, command, arguments)
    except FileNotFoundError:
        return "file_not_found"


def _read_or_replace(
    folder: int, name: str, command: str, arguments: dict[str, Any]
) -> dict[str, Any] | str:
    with os.fdopen(open_regular(name, folder, os.O_RDWR), "r+b") as file:
        raw = file.read(MAX_EDITED_BYTES + 1)
        if command == "view":
            cut = len(raw) > MAX_EDITED_BYTES
            text = raw[:MAX_EDITED_BYTES].decode(errors="replace")
            lines = text.splitlines()
            if cut:
                text += f"\n[file cut at {MAX_EDITED_BYTES} bytes]"
            return {
                "type": "text_editor_code_execution_view_result",
                "file_type": "text",
                "content": text,
                "num_lines": len(lines),
                "start_line": 1,
                "total_lines": len(lines),
            }
        if len(raw) > MAX_EDITED_BYTES:
            return "invalid_tool_input"  # too large to edit whole; bash (sed) can
        text = raw.decode(errors="replace")
        old, new = arguments.get("old_str"), arguments.get("new_str", "")
        if not isinstance(old, str) or not isinstance(new, str) or not old:
            return "invalid_tool_input"
        if text.count(old) != 1:
            return "string_not_found"
        start = text[: text.index(old)].count("\n") + 1
        file.seek(0)
        file.truncate()
        file.write(text.replace(old, new, 1).encode())
    old_lines, new_lines = old.splitlines(), new.splitlines()
    return {
        "type": "text_editor_code_execution_str_replace_result",
        "old_start": start,
        "old_lines": len(old_lines),
        "new_start": start,
        "new_lines": len(new_lines),
        "lines": [f"-{line}" for line in old_lines] + [f"+{line}" for line in new_lines],
    }


def _exists(name: str, folder: int) -> bool:
    try:
        os.stat(name, dir_fd=folder, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _outputs(container: Container) -> dict[str, tuple[int, int]]:
    """The regular files in outputs/ now, by name: (size, mtime), to tell what a run changed."""
    try:
        with directory_beneath(container.workspace, [OUTPUTS]) as folder:
            return _stamps(folder)
    except OSError:
        return {}


def _stamps(folder: int) -> dict[str, tuple[int, int]]:
    stamps = {}
    for entry in _entries(folder):
        if entry.is_file(follow_symlinks=False):
            info = entry.stat(follow_symlinks=False)
            stamps[entry.name] = (info.st_size, info.st_mtime_ns)
    return stamps


def _entries(folder: int) -> Iterator[os.DirEntry[str]]:
    # scandir works on its own duplicate of the descriptor; the caller's stays open.
    with os.scandir(folder) as entries:
        yield from entries


def _mime_type(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"
