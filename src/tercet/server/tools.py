"""Client tools on the server side: which calls a request allows, checked by Anthropic's rules."""

from __future__ import annotations

from tercet.engine.base import ToolPolicy
from tercet.wire.errors import InvalidRequestError
from tercet.wire.requests import (
    CustomToolParam,
    MessageCreateRequest,
    ToolChoiceAny,
    ToolChoiceNone,
    ToolChoiceTool,
)


def tool_policy(request: MessageCreateRequest, *, thinking: bool) -> ToolPolicy | None:
    """The calls the model may make, or None when it may only answer in text.

    Only custom tools (with an `input_schema`) can be called for now; Anthropic-defined tool
    types are accepted in `tools` but not offered to the model yet.
    """
    schemas = {
        t.name: t.input_schema for t in request.tools or [] if isinstance(t, CustomToolParam)
    }
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
    if isinstance(choice, ToolChoiceTool):
        return ToolPolicy(schemas=schemas, choice="tool", name=choice.name)
    if isinstance(choice, ToolChoiceAny):
        return ToolPolicy(schemas=schemas, choice="any")
    return ToolPolicy(schemas=schemas, choice="auto")
