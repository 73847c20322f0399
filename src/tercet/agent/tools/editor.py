"""The text editor tool (`text_editor_20250728`, named `str_replace_based_edit_tool`).

Commands, as Anthropic documents them: `view` (a file numbered like `cat -n`, optionally a
`view_range` [start, end] with -1 for the end; a directory two levels deep without hidden
items), `create` (writes `file_text`, replacing a file that exists, making parent
directories), `str_replace` (`old_str` must occur exactly once; `new_str` replaces it) and
`insert` (`insert_text` after line `insert_line`, 0 for the top; `new_str` is accepted too, as
older versions named it). Paths are absolute or relative to the context's working directory.
Every write first records the file in the context's checkpoints.
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import os
from pathlib import Path
from typing import Any

from tercet.agent.tools.base import ToolContext, ToolInputError, ToolResult, one_line, resolve_path
from tercet.agent.tools.text_edits import (
    insert_after,
    line_range,
    numbered,
    replace_once,
    snippet,
    split_lines,
)

NAME = "str_replace_based_edit_tool"
TOOL_TYPE = "text_editor_20250728"
COMMANDS = ("view", "create", "str_replace", "insert")
WRITE_COMMANDS = frozenset({"create", "str_replace", "insert"})
IMAGE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
}
MAX_IMAGE_BYTES = 5 * 1024 * 1024  # Anthropic's limit for one image
MAX_LISTED = 1000  # directory entries in one view
MAX_VIEW_BYTES = 16 * 1024 * 1024  # read by one view: a huge file must not fill the memory
MAX_EDITED_BYTES = 16 * 1024 * 1024  # a file str_replace or insert reads whole, then rewrites


class TextEditorTool:
    """Views, creates and edits text files for the model. `max_characters` bounds what one
    `view` shows (whole lines; a note says how to see the rest); None shows files whole."""

    name = NAME
    concurrent_reads = True  # views of different files may run side by side

    def __init__(self, max_characters: int | None = 32_000) -> None:
        self.max_characters = max_characters

    def definition(self) -> dict[str, Any]:
        definition: dict[str, Any] = {"type": TOOL_TYPE, "name": NAME}
        if self.max_characters is not None:
            definition["max_characters"] = self.max_characters
        return definition

    def is_read_only(self, input: dict[str, Any]) -> bool:
        return input.get("command") == "view"

    def describe(self, input: dict[str, Any]) -> str:
        return f"text editor: {input.get('command')} {one_line(str(input.get('path', '')))}"

    async def run(self, input: dict[str, Any], ctx: ToolContext) -> ToolResult:
        command = input.get("command")
        raw = input.get("path")
        try:
            path = resolve_path(ctx.cwd, raw)
            if command == "view":  # in a thread: a 16 MiB read must not hold up other calls
                return await asyncio.to_thread(self._view, path, str(raw), input.get("view_range"))
            if command in WRITE_COMMANDS:
                return ToolResult(_edit(command, path, str(raw), input, ctx))
            raise ToolInputError(
                f"Unrecognized command {command}. The allowed commands for the {NAME} tool "
                f"are: {', '.join(COMMANDS)}."
            )
        except ToolInputError as exc:
            return ToolResult(str(exc), is_error=True)
        except OSError as exc:
            return ToolResult(f"{exc.strerror or exc}: {raw}", is_error=True)

    async def aclose(self) -> None:
        return None

    def _view(self, path: Path, shown: str, view_range: object) -> ToolResult:
        if path.is_dir():
            if view_range is not None:
                raise ToolInputError(
                    "The `view_range` parameter is not allowed when `path` points to a directory."
                )
            return ToolResult(_list_directory(path, shown))
        if not path.exists():
            raise ToolInputError(f"The path {shown} does not exist. Please provide a valid path.")
        media_type = IMAGE_TYPES.get(path.suffix.lower())
        if media_type is not None:
            return ToolResult(_image(path, shown, media_type))
        text, cut = read_head(path, shown, MAX_VIEW_BYTES)
        lines = split_lines(text)
        start, end = line_range(view_range, len(lines))
        shown_lines = lines[start - 1 : end]
        body, shown_count = _bounded(shown_lines, start, self.max_characters)
        header = f"Here's the result of running `cat -n` on {shown}:\n"
        if not lines:
            return ToolResult(f"{header}(the file is empty)")
        if shown_count < len(shown_lines):
            last = start + shown_count - 1
            body += (
                f"\n[Truncated to {self.max_characters} characters: lines {start}-{last} of "
                f"{len(lines)} are shown. See the rest with view_range [{last + 1}, {end}], "
                "or find lines with `grep -n`.]"
            )
        if cut:
            body += (
                f"\n[{shown} is longer than {MAX_VIEW_BYTES} bytes: only its first "
                f"{len(lines)} lines were read. See later lines with `sed -n` or `grep -n`.]"
            )
        return ToolResult(header + body)


def edited_path(input: dict[str, Any], cwd: Path) -> Path | None:
    """The file a text editor call would write, or None for a view or an unusable path."""
    if input.get("command") not in WRITE_COMMANDS:
        return None
    try:
        return resolve_path(cwd, input.get("path"))
    except ToolInputError:
        return None


def read_text(path: Path, shown: str) -> str:
    """The whole text of a file to edit, its line endings untouched; a clear error for binary
    or non-UTF-8 text, or a file over MAX_EDITED_BYTES."""
    text, cut = read_head(path, shown, MAX_EDITED_BYTES)
    if cut:
        raise ToolInputError(
            f"{shown} is larger than {MAX_EDITED_BYTES} bytes, too large to edit with this "
            "tool; use bash (sed, a script) for it."
        )
    return text


def read_head(path: Path, shown: str, max_bytes: int) -> tuple[str, bool]:
    """At most `max_bytes` of the file's text, whole lines when cut, and whether it was cut
    (for views: a huge file must not fill the memory)."""
    if not path.is_file():
        raise ToolInputError(f"The path {shown} is not a file.")
    with path.open("rb") as handle:
        data = handle.read(max_bytes + 1)
    if len(data) <= max_bytes:
        return _decode(data, shown, final=True), False
    data = data[:max_bytes]
    return _decode(data[: data.rfind(b"\n") + 1] or data, shown, final=False), True


def _decode(data: bytes, shown: str, final: bool) -> str:
    """`data` as UTF-8; not `final`, a character cut off at the end is dropped."""
    if b"\0" in data[:8192]:
        raise ToolInputError(f"{shown} is a binary file; the text editor shows only text.")
    try:
        return codecs.getincrementaldecoder("utf-8")().decode(data, final=final)
    except UnicodeDecodeError as exc:
        raise ToolInputError(
            f"{shown} is not UTF-8 text ({exc.reason} at byte {exc.start})."
        ) from None


def _edit(command: str, path: Path, shown: str, input: dict[str, Any], ctx: ToolContext) -> str:
    if command == "create":
        text = _string(input, "file_text")
        if path.is_dir():
            raise ToolInputError(f"The path {shown} is a directory; `create` writes files.")
        existed = path.exists()
        _write(path, text, ctx)
        verb = "overwritten" if existed else "created"
        return f"File {verb} successfully at: {shown}"
    if not path.exists():
        raise ToolInputError(f"The path {shown} does not exist. Please provide a valid path.")
    original = read_text(path, shown)
    # Only a file whose every line ends in CRLF is edited as LF and written back as CRLF: a
    # lone "\r\n" (say in a string literal) must not turn every other line ending into one.
    crlf = "\r\n" in original and original.count("\n") == original.count("\r\n")
    content = original.replace("\r\n", "\n") if crlf else original
    if command == "str_replace":
        old = _string(input, "old_str")
        new = _string(input, "new_str", default="")
        if crlf:
            old, new = old.replace("\r\n", "\n"), new.replace("\r\n", "\n")
        content, first, last = replace_once(content, old, new, shown)
        review = "Review the changes and make sure they are as expected. Edit the file again if necessary."
    else:
        key = "insert_text" if "insert_text" in input else "new_str"
        text = _string(input, key)
        content, first, last = insert_after(content, input.get("insert_line"), text)
        review = (
            "Review the changes and make sure they are as expected (correct indentation, no "
            "duplicate lines, etc). Edit the file again if necessary."
        )
    _write(path, content.replace("\n", "\r\n") if crlf else content, ctx)
    return (
        f"The file {shown} has been edited. Here's the result of running `cat -n` on a snippet "
        f"of {shown}:\n{snippet(content, first, last)}\n{review}"
    )


def _write(path: Path, text: str, ctx: ToolContext) -> None:
    if ctx.checkpoints is not None:
        ctx.checkpoints.record(path, ctx.step)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8"))


def _string(input: dict[str, Any], key: str, default: str | None = None) -> str:
    value = input.get(key, default)
    if not isinstance(value, str):
        raise ToolInputError(f"Parameter `{key}` is required (a string).")
    return value


def _bounded(lines: list[str], first: int, max_characters: int | None) -> tuple[str, int]:
    """`lines` numbered from `first`, as many whole lines as fit in `max_characters`."""
    if max_characters is None:
        return numbered(lines, first), len(lines)
    shown: list[str] = []
    size = 0
    for number, line in enumerate(lines, first):
        entry = numbered([line], number)
        if shown and size + len(entry) + 1 > max_characters:
            break
        shown.append(entry)
        size += len(entry) + 1
    return "\n".join(shown)[:max_characters], len(shown)


def _list_directory(path: Path, shown: str) -> str:
    entries: list[str] = []
    base = shown.rstrip("/") or "/"

    def walk(directory: Path, prefix: str, depth: int) -> None:
        try:
            children = sorted(directory.iterdir(), key=lambda p: p.name)
        except OSError:
            return
        for child in children:
            if len(entries) > MAX_LISTED:
                return
            if child.name.startswith("."):
                continue
            is_dir = child.is_dir() and not child.is_symlink()
            entries.append(f"{prefix}/{child.name}" + ("/" if is_dir else ""))
            if is_dir and depth < 2:
                walk(child, f"{prefix}/{child.name}", depth + 1)

    walk(path, base.rstrip("/"), 1)
    listing = "\n".join(entries[:MAX_LISTED])
    if len(entries) > MAX_LISTED:
        listing += f"\n[only the first {MAX_LISTED} entries are shown; view a subdirectory]"
    return (
        f"Here's the files and directories up to 2 levels deep in {shown}, excluding hidden "
        f"items:\n{base}\n{listing}"
    ).rstrip("\n")


def _image(path: Path, shown: str, media_type: str) -> list[dict[str, Any]]:
    size = os.path.getsize(path)
    if size > MAX_IMAGE_BYTES:
        raise ToolInputError(f"{shown} is {size} bytes; images up to {MAX_IMAGE_BYTES} are shown.")
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return [{"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}]
