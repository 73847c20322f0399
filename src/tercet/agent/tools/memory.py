"""The memory tool (`memory_20250818`): notes the agent keeps across runs, as files.

The model sees one directory, `/memories`; every path it names must lie inside it, and maps to
the same place under `root`. A path that leaves it (`..`, or a symlink pointing out) is refused.
Commands and their results follow Anthropic's memory tool and its reference implementation:
view, create (a new file only), str_replace, insert (`insert_text` after `insert_line`),
delete and rename.
"""

from __future__ import annotations

import shutil
from pathlib import Path, PurePosixPath
from typing import Any

from tercet.agent.tools.base import ToolContext, ToolInputError, ToolResult, one_line
from tercet.agent.tools.editor import MAX_VIEW_BYTES, read_head, read_text
from tercet.agent.tools.text_edits import (
    insert_after,
    line_range,
    numbered,
    replace_once,
    snippet,
    split_lines,
)

NAME = "memory"
TOOL_TYPE = "memory_20250818"
PREFIX = "/memories"
COMMANDS = ("view", "create", "str_replace", "insert", "delete", "rename")


class MemoryTool:
    """The memory directory `/memories`, kept under `root` (created if missing)."""

    name = NAME
    concurrent_reads = True  # views may run beside other reads

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def definition(self) -> dict[str, Any]:
        return {"type": TOOL_TYPE, "name": NAME}

    def is_read_only(self, input: dict[str, Any]) -> bool:
        return input.get("command") == "view"

    def describe(self, input: dict[str, Any]) -> str:
        if input.get("command") == "rename":
            target = f"{input.get('old_path')} -> {input.get('new_path')}"
        else:
            target = str(input.get("path", ""))
        return f"{NAME}: {input.get('command')} {one_line(target)}"

    def host_path(self, path: object) -> Path:
        """Where a /memories path lives under `root`; refuses paths that would leave it."""
        if not isinstance(path, str) or not (path == PREFIX or path.startswith(PREFIX + "/")):
            raise ToolInputError(f"Path must start with {PREFIX}, got: {path}")
        parts = PurePosixPath(path).parts[2:]  # after "/" and "memories"
        if any(part in ("..", ".") for part in parts):
            raise ToolInputError(f"Path {path} would escape the {PREFIX} directory")
        root = self.root.resolve()
        target = root.joinpath(*parts)
        resolved = target.resolve()  # follows symlinks, even dangling ones
        if resolved != root and not resolved.is_relative_to(root):
            raise ToolInputError(f"Path {path} would escape the {PREFIX} directory via a symlink")
        return target

    async def run(self, input: dict[str, Any], ctx: ToolContext) -> ToolResult:
        command = input.get("command")
        try:
            if command == "view":
                return ToolResult(self._view(input))
            if command == "create":
                return ToolResult(self._create(input, ctx))
            if command == "str_replace":
                return ToolResult(self._str_replace(input, ctx))
            if command == "insert":
                return ToolResult(self._insert(input, ctx))
            if command == "delete":
                return ToolResult(self._delete(input, ctx))
            if command == "rename":
                return ToolResult(self._rename(input, ctx))
            raise ToolInputError(
                f"Unrecognized command {command}. The allowed commands for the {NAME} tool "
                f"are: {', '.join(COMMANDS)}."
            )
        except ToolInputError as exc:
            return ToolResult(str(exc), is_error=True)
        except OSError as exc:
            return ToolResult(f"{exc.strerror or exc}: {input.get('path')}", is_error=True)

    async def aclose(self) -> None:
        return None

    def _view(self, input: dict[str, Any]) -> str:
        shown = str(input.get("path"))
        target = self.host_path(input.get("path"))
        if target.is_dir():
            return self._listing(target, shown.rstrip("/") or PREFIX)
        if not target.is_file():
            raise ToolInputError(f"The path {shown} does not exist. Please provide a valid path.")
        text, cut = read_head(target, shown, MAX_VIEW_BYTES)
        lines = split_lines(text)
        start, end = line_range(input.get("view_range"), len(lines))
        note = f"\n[{shown} is longer than {MAX_VIEW_BYTES} bytes: only its start is shown]"
        return (
            f"Here's the content of {shown} with line numbers:\n"
            + numbered(lines[start - 1 : end], start)
            + (note if cut else "")
        )

    def _listing(self, directory: Path, shown: str) -> str:
        rows = [f"{_size(directory)}\t{shown}"]

        def walk(current: Path, prefix: str, depth: int) -> None:
            for child in sorted(current.iterdir(), key=lambda p: p.name):
                if child.name.startswith(".") or _escapes(child, self.root):
                    continue
                if child.is_dir():
                    rows.append(f"{_size(child)}\t{prefix}/{child.name}/")
                    if depth < 2:
                        walk(child, f"{prefix}/{child.name}", depth + 1)
                elif child.is_file():
                    rows.append(f"{_size(child)}\t{prefix}/{child.name}")

        walk(directory, shown, 1)
        header = (
            f"Here're the files and directories up to 2 levels deep in {shown}, excluding "
            "hidden items:"
        )
        return header + "\n" + "\n".join(rows)

    def _create(self, input: dict[str, Any], ctx: ToolContext) -> str:
        shown = str(input.get("path"))
        target = self.host_path(input.get("path"))
        text = input.get("file_text")
        if not isinstance(text, str):
            raise ToolInputError("Parameter `file_text` is required (a string).")
        if target.exists():
            raise ToolInputError(f"File {shown} already exists")
        _record(ctx, [target])
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(text.encode("utf-8"))
        return f"File created successfully at: {shown}"

    def _existing_file(self, input: dict[str, Any]) -> tuple[Path, str, str]:
        shown = str(input.get("path"))
        target = self.host_path(input.get("path"))
        if not target.exists():
            raise ToolInputError(f"The path {shown} does not exist. Please provide a valid path.")
        return target, shown, read_text(target, shown)

    def _str_replace(self, input: dict[str, Any], ctx: ToolContext) -> str:
        target, shown, content = self._existing_file(input)
        old, new = input.get("old_str"), input.get("new_str", "")
        if not isinstance(old, str) or not isinstance(new, str):
            raise ToolInputError("Parameters `old_str` and `new_str` must be strings.")
        content, first, last = replace_once(content, old, new, shown)
        _record(ctx, [target])
        target.write_bytes(content.encode("utf-8"))
        return (
            "The memory file has been edited. Here is the snippet showing the change (with "
            f"line numbers):\n{snippet(content, first, last)}"
        )

    def _insert(self, input: dict[str, Any], ctx: ToolContext) -> str:
        target, shown, content = self._existing_file(input)
        text = input.get("insert_text", input.get("new_str"))
        if not isinstance(text, str):
            raise ToolInputError("Parameter `insert_text` is required (a string).")
        content, _, _ = insert_after(content, input.get("insert_line"), text)
        _record(ctx, [target])
        target.write_bytes(content.encode("utf-8"))
        return f"The file {shown} has been edited."

    def _delete(self, input: dict[str, Any], ctx: ToolContext) -> str:
        shown = str(input.get("path"))
        target = self.host_path(input.get("path"))
        if target == self.root.resolve():
            raise ToolInputError(f"Cannot delete the {PREFIX} directory itself")
        if target.is_dir() and not target.is_symlink():
            _record(ctx, _files_under(target))
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            _record(ctx, [target])
            target.unlink()
        else:
            raise ToolInputError(f"The path {shown} does not exist")
        return f"Successfully deleted {shown}"

    def _rename(self, input: dict[str, Any], ctx: ToolContext) -> str:
        old_shown, new_shown = str(input.get("old_path")), str(input.get("new_path"))
        old = self.host_path(input.get("old_path"))
        new = self.host_path(input.get("new_path"))
        if old == self.root.resolve():
            raise ToolInputError(f"Cannot rename the {PREFIX} directory itself")
        if not old.exists():
            raise ToolInputError(f"The path {old_shown} does not exist")
        if new.exists():
            raise ToolInputError(f"The destination {new_shown} already exists")
        if new.is_relative_to(old):
            raise ToolInputError(f"Cannot move {old_shown} inside itself")
        if old.is_dir():
            moved = _files_under(old)
            _record(ctx, [*moved, *(new / file.relative_to(old) for file in moved)])
        else:
            _record(ctx, [old, new])
        new.parent.mkdir(parents=True, exist_ok=True)
        old.rename(new)
        return f"Successfully renamed {old_shown} to {new_shown}"


def memory_paths(input: dict[str, Any]) -> list[str]:
    """The /memories paths a memory call names (what permission patterns match)."""
    keys = ("old_path", "new_path") if input.get("command") == "rename" else ("path",)
    return [value for key in keys if isinstance(value := input.get(key), str)]


def _record(ctx: ToolContext, files: list[Path]) -> None:
    if ctx.checkpoints is not None:
        for file in files:
            ctx.checkpoints.record(file, ctx.step)


def _files_under(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and not p.is_symlink())


def _escapes(path: Path, root: Path) -> bool:
    resolved, base = path.resolve(), root.resolve()
    return resolved != base and not resolved.is_relative_to(base)


def _size(path: Path) -> str:
    """A size as `du -h` writes it: 512B, 4.0K, 12K, 1.5M."""
    value = float(path.stat().st_size)
    for unit in ("B", "K", "M"):
        if value < 1024:
            return f"{value:.0f}{unit}" if unit == "B" or value >= 10 else f"{value:.1f}{unit}"
        value /= 1024
    return f"{value:.1f}G"
