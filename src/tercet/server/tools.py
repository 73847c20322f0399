"""Client tools on the server side: which calls a request allows, checked by Anthropic's rules."""

from __future__ import annotations

from collections.abc import Sequence

from tercet.engine.base import ToolPolicy
from tercet.server.client_tools import offered_tools
from tercet.wire.errors import InvalidRequestError
from tercet.wire.requests import (
    CustomToolParam,
    MessageCreateRequest,
    ToolChoiceAny,
    ToolChoiceNone,
    ToolChoiceTool,
)


def tool_policy(
    request: MessageCreateRequest,
    *,
    thinking: bool,
    extra_tools: Sequence[CustomToolParam] = (),
) -> ToolPolicy | None:
    """The calls the model may make, or None when it may only answer in text.

    Custom tools, Anthropic-defined client tools (bash, text editor, memory) and the code
    execution tool's sub-tools and MCP tools (`extra_tools`; the server runs both) can be called.
    """
    offered = [*offered_tools(request.tools), *extra_tools]
    schemas = {t.name: t.input_schema for t in offered}
    choice = request.tool_choice
    if isinstance(choice, ToolChoiceAny | ToolChoiceTool):
        if not schemas:
            raise InvalidRequestError(
                f"tool_choice: `{choice.type}` requires at least one tool in `tools`"
            )
        if thinking:
            raise InvalidRequestError(
                "Thinking may not be enabled when tool_choice forces tool use."
            )
    if isinstance(choice, ToolChoiceTool) and choice.name not in schemas:
        raise InvalidRequestError(f"tool_choice.name: tool `{choice.name}` is not in `tools`")
    if not schemas or isinstance(choice, ToolChoiceNone):
        return None
    parallel = not (choice is not None and choice.disable_parallel_tool_use)
    if isinstance(choice, ToolChoiceTool):
        return ToolPolicy(schemas=schemas, choice="tool", name=choice.name, parallel=parallel)
    if isinstance(choice, ToolChoiceAny):
        return ToolPolicy(schemas=schemas, choice="any", parallel=parallel)
    return ToolPolicy(schemas=schemas, choice="auto", parallel=parallel)
