"""Anthropic-defined client tools (bash, the text editor, memory) as the model sees them.

Claude knows these tools by type, so a request names them without a schema. Other models do not,
so the server offers each as an ordinary tool with the input schema Anthropic documents for it.
The client still runs them: to the client a call looks exactly as it would from Anthropic's API.
Server tools (code execution, web search, MCP toolsets) are run by the server and are not here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tercet.server.code_execution import code_execution_tools
from tercet.wire.errors import InvalidRequestError
from tercet.wire.requests import BuiltinToolParam, CustomToolParam, ToolParam


@dataclass(frozen=True)
class ClientToolKind:
    """One family of Anthropic-defined client tools: its fixed name and what the model reads."""

    name: str
    description: str
    input_schema: dict[str, Any]


def _object(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required}


_STRING = {"type": "string"}

BASH = ClientToolKind(
    name="bash",
    description=(
        "Run a command in a persistent bash shell and read its output. Set `restart` to true "
        "to start a fresh shell."
    ),
    input_schema=_object({"command": _STRING, "restart": {"type": "boolean"}}, []),
)


def _text_editor(name: str, commands: list[str]) -> ClientToolKind:
    return ClientToolKind(
        name=name,
        description=(
            "View, create and edit text files. `view` shows a file with line numbers (or lists "
            "a directory); `create` writes `file_text` to a new file; `str_replace` replaces "
            "`old_str`, which must occur exactly once, with `new_str`; `insert` puts `new_str` "
            "after line `insert_line` (0 for the top)."
            + (" `undo_edit` reverts the last edit." if "undo_edit" in commands else "")
        ),
        input_schema=_object(
            {
                "command": {"type": "string", "enum": commands},
                "path": _STRING,
                "file_text": _STRING,
                "old_str": _STRING,
                "new_str": _STRING,
                "insert_line": {"type": "integer", "minimum": 0},
                "view_range": {"type": "array", "items": {"type": "integer"}},
            },
            ["command", "path"],
        ),
    )


MEMORY = ClientToolKind(
    name="memory",
    description=(
        "Keep notes that outlast this conversation, as files under /memories. Commands: view, "
        "create (file_text), str_replace (old_str, new_str), insert (insert_line, insert_text), "
        "delete, rename (old_path, new_path)."
    ),
    input_schema=_object(
        {
            "command": {
                "type": "string",
                "enum": ["view", "create", "str_replace", "insert", "delete", "rename"],
            },
            "path": _STRING,
            "file_text": _STRING,
            "old_str": _STRING,
            "new_str": _STRING,
            "insert_line": {"type": "integer", "minimum": 0},
            "insert_text": _STRING,
            "old_path": _STRING,
            "new_path": _STRING,
        },
        ["command"],
    ),
)

_OLD_EDITOR = _text_editor(
    "str_replace_editor", ["view", "create", "str_replace", "insert", "undo_edit"]
)
_EDITOR = _text_editor("str_replace_based_edit_tool", ["view", "create", "str_replace", "insert"])

CLIENT_TOOL_KINDS: dict[str, ClientToolKind] = {
    "bash_20241022": BASH,
    "bash_20250124": BASH,
    "text_editor_20241022": _OLD_EDITOR,
    "text_editor_20250124": _OLD_EDITOR,
    "text_editor_20250429": _EDITOR,
    "text_editor_20250728": _EDITOR,
    "memory_20250818": MEMORY,
}


def offered_tools(tools: Sequence[ToolParam] | None) -> list[CustomToolParam]:
    """The tools the model is offered: custom tools as sent, client tool types as custom tools.

    A client tool type must carry its fixed name, as on Anthropic's API.
    """
    offered: list[CustomToolParam] = []
    for index, tool in enumerate(tools or ()):
        if isinstance(tool, CustomToolParam):
            offered.append(tool)
            continue
        kind = CLIENT_TOOL_KINDS.get(tool.type)
        # A server tool: code execution is offered below, MCP toolsets by the MCP connector.
        if kind is None or not isinstance(tool, BuiltinToolParam):
            continue
        if tool.name is not None and tool.name != kind.name:
            raise InvalidRequestError(
                f"tools.{index}.name: a `{tool.type}` tool must be named `{kind.name}`"
            )
        offered.append(_as_custom(tool, kind))
    return offered + code_execution_tools(tools)


def _as_custom(tool: BuiltinToolParam, kind: ClientToolKind) -> CustomToolParam:
    return CustomToolParam(
        name=kind.name,
        description=kind.description,
        input_schema=kind.input_schema,
        cache_control=tool.cache_control,
    )
