"""Edits on text shared by the text editor and the memory tool: numbered views, a replacement
that must match exactly once (with a helpful message when it does not), insertion after a line.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from tercet.agent.tools.base import ToolInputError

LINE_NUMBER_WIDTH = 6
SNIPPET_CONTEXT = 4  # lines shown around an edit


def split_lines(content: str) -> list[str]:
    """The lines of `content`, without the empty one a final newline would leave."""
    lines = content.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def numbered(lines: Sequence[str], first: int = 1) -> str:
    """`lines` as `cat -n` shows them, the first numbered `first`."""
    return "\n".join(
        f"{number:>{LINE_NUMBER_WIDTH}}\t{line}" for number, line in enumerate(lines, first)
    )


def snippet(content: str, first_line: int, last_line: int) -> str:
    """Lines `first_line`..`last_line` (1-based) of `content` with a few lines around, numbered."""
    lines = split_lines(content)
    start = max(first_line - SNIPPET_CONTEXT, 1)
    end = min(last_line + SNIPPET_CONTEXT, len(lines))
    return numbered(lines[start - 1 : end], start)


def line_range(view_range: object, line_count: int) -> tuple[int, int]:
    """The 1-based, inclusive lines a `view_range` asks for, checked against the file."""
    if view_range is None:
        return 1, line_count
    if (
        not isinstance(view_range, list)
        or len(view_range) != 2
        or not all(isinstance(n, int) and not isinstance(n, bool) for n in view_range)
    ):
        raise ToolInputError("Invalid `view_range`. It should be a list of two integers.")
    start, end = view_range
    if not 1 <= start <= max(line_count, 1):
        raise ToolInputError(
            f"Invalid `view_range`: {view_range}. Its first element `{start}` should be within "
            f"the range of lines of the file: [1, {line_count}]."
        )
    if end == -1:
        return start, line_count
    if end < start:
        raise ToolInputError(
            f"Invalid `view_range`: {view_range}. Its second element `{end}` should be larger "
            f"or equal than its first `{start}`, or -1 for the end of the file."
        )
    return start, min(end, line_count)


def replace_once(content: str, old: str, new: str, shown_path: str) -> tuple[str, int, int]:
    """`content` with `old` replaced by `new`, and the first and last lines of the new text.

    `old` must occur exactly once: otherwise the error says where it occurs, or what comes
    closest to it.
    """
    if not old:
        raise ToolInputError("Parameter `old_str` must not be empty.")
    count = content.count(old)
    if count == 0:
        raise ToolInputError(_miss_message(content, old, shown_path))
    if count > 1:
        lines = _occurrence_lines(content, old)
        raise ToolInputError(
            f"No replacement was performed. Multiple occurrences of old_str `{old}` in lines "
            f"{', '.join(map(str, lines))}. Please ensure it is unique: include more of the "
            "surrounding lines in old_str."
        )
    position = content.index(old)
    first = content.count("\n", 0, position) + 1
    return content.replace(old, new, 1), first, first + new.count("\n")


def insert_after(content: str, line: object, text: str) -> tuple[str, int, int]:
    """`content` with `text` inserted after line `line` (0: at the top), and the first and last
    lines of the inserted text."""
    lines = split_lines(content)
    if isinstance(line, bool) or not isinstance(line, int) or not 0 <= line <= len(lines):
        raise ToolInputError(
            f"Invalid `insert_line` parameter: {line}. It should be within the range of lines "
            f"of the file: [0, {len(lines)}]."
        )
    inserted = split_lines(text) or [""]
    result = [*lines[:line], *inserted, *lines[line:]]
    ending = "\n" if content.endswith("\n") or not content else ""
    return "\n".join(result) + ending, line + 1, line + len(inserted)


def _occurrence_lines(content: str, old: str) -> list[int]:
    lines, start = [], 0
    while (position := content.find(old, start)) != -1:
        lines.append(content.count("\n", 0, position) + 1)
        start = position + 1
    return lines


def _miss_message(content: str, old: str, shown_path: str) -> str:
    message = (
        f"No replacement was performed, old_str `{old}` did not appear verbatim in {shown_path}."
    )
    lines = split_lines(content)
    wanted = split_lines(old) or [old]
    hint = _whitespace_match(lines, wanted)
    if hint is not None:
        start = hint + 1
        return (
            f"{message} It does match, ignoring whitespace, lines {start}-{start + len(wanted) - 1}"
            " (check indentation, tabs against spaces, and trailing spaces). Those lines are:\n"
            + numbered(lines[hint : hint + len(wanted)], start)
        )
    closest = _closest_line(lines, wanted)
    if closest is not None:
        end = min(closest + len(wanted), len(lines))
        return (
            f"{message} The closest lines are {closest + 1}-{end}:\n"
            + numbered(lines[closest:end], closest + 1)
            + "\nView the file to copy the exact text into old_str."
        )
    return f"{message} View the file to copy the exact text into old_str."


def _whitespace_match(lines: list[str], wanted: list[str]) -> int | None:
    """The index of the first run of `lines` equal to `wanted` when whitespace is ignored."""
    squeeze = ["".join(line.split()) for line in lines]
    target = ["".join(line.split()) for line in wanted]
    if not any(target):
        return None
    for index in range(len(squeeze) - len(target) + 1):
        if squeeze[index : index + len(target)] == target:
            return index
    return None


def _closest_line(lines: list[str], wanted: list[str]) -> int | None:
    """The index of the line most like the first non-blank line of `wanted`, if any is close."""
    probe = next((line.strip() for line in wanted if line.strip()), "")
    if not probe:
        return None
    stripped = [line.strip() for line in lines]
    best = difflib.get_close_matches(probe, stripped, n=1, cutoff=0.6)
    return stripped.index(best[0]) if best else None
