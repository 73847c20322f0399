"""Request bodies: `POST /v1/messages` and `POST /v1/messages/count_tokens`."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag

from tercet.wire.base import CacheControl, RequestModel
from tercet.wire.content import ContentBlockParam, TextBlockParam


class MessageParam(RequestModel):
    """One turn. `system` turns may appear mid-conversation: Claude Code sends them."""

    role: Literal["user", "assistant", "system"]
    content: str | list[ContentBlockParam]


# --- tools -------------------------------------------------------------------------------------


class CustomToolParam(RequestModel):
    """A tool the client defines and runs itself."""

    type: Literal["custom"] | None = None
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,128}$")
    description: str | None = None
    input_schema: dict[str, Any]
    cache_control: CacheControl | None = None
    strict: bool | None = None
    defer_loading: bool | None = None
    input_examples: list[dict[str, Any]] | None = None


class BuiltinToolParam(RequestModel):
    """An Anthropic-defined tool (`bash_20250124`, `code_execution_20250825`, `mcp_toolset`, ...).

    Its remaining fields depend on the type and are kept as sent for the parts that run it.
    """

    model_config = RequestModel.model_config | {"extra": "allow"}

    type: str
    name: str | None = None
    cache_control: CacheControl | None = None


class MCPToolConfig(RequestModel):
    """Whether one MCP tool (or, as `default_config`, every tool of a server) is offered."""

    enabled: bool | None = None  # true when absent
    defer_loading: bool | None = None


class MCPToolsetParam(RequestModel):
    """`mcp_toolset` (beta `mcp-client-2025-11-20`): which tools of one MCP server are offered.

    `cache_control` applies to the server's last offered tool.
    """

    type: Literal["mcp_toolset"]
    mcp_server_name: str
    default_config: MCPToolConfig | None = None
    configs: dict[str, MCPToolConfig] | None = None
    cache_control: CacheControl | None = None


def _tool_kind(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    if kind == "mcp_toolset":
        return "mcp_toolset"
    return "custom" if kind in (None, "custom") else "builtin"


ToolParam = Annotated[
    Annotated[CustomToolParam, Tag("custom")]
    | Annotated[MCPToolsetParam, Tag("mcp_toolset")]
    | Annotated[BuiltinToolParam, Tag("builtin")],
    Discriminator(_tool_kind),
]


class ToolChoiceAuto(RequestModel):
    type: Literal["auto"]
    disable_parallel_tool_use: bool | None = None


class ToolChoiceAny(RequestModel):
    type: Literal["any"]
    disable_parallel_tool_use: bool | None = None


class ToolChoiceTool(RequestModel):
    type: Literal["tool"]
    name: str
    disable_parallel_tool_use: bool | None = None


class ToolChoiceNone(RequestModel):
    type: Literal["none"]


ToolChoice = Annotated[
    ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool | ToolChoiceNone,
    Field(discriminator="type"),
]


# --- thinking and output ---------------------------------------------------------------------


class ThinkingEnabled(RequestModel):
    type: Literal["enabled"]
    budget_tokens: int
    display: Literal["summarized", "omitted"] | None = None


class ThinkingDisabled(RequestModel):
    type: Literal["disabled"]


class ThinkingAdaptive(RequestModel):
    type: Literal["adaptive"]
    display: Literal["summarized", "omitted"] | None = None


ThinkingConfig = Annotated[
    ThinkingEnabled | ThinkingDisabled | ThinkingAdaptive, Field(discriminator="type")
]


class OutputConfig(RequestModel):
    effort: Literal["low", "medium", "high", "xhigh", "max"] | None = None
    format: dict[str, Any] | None = None


class Metadata(RequestModel):
    user_id: str | None = None


# --- MCP servers -------------------------------------------------------------------------------


class MCPToolConfiguration(RequestModel):
    """Beta `mcp-client-2025-04-04` only: which of the server's tools are offered."""

    enabled: bool | None = None
    allowed_tools: list[str] | None = None


class MCPServerDefinition(RequestModel):
    """A remote MCP server whose tools the server calls for the model (beta MCP connector)."""

    type: Literal["url"]
    url: str
    name: str = Field(min_length=1)
    # Sent as a Bearer token, never logged. Printable ASCII only: anything else could not be
    # a header, and the HTTP client's complaint would quote it.
    authorization_token: str | None = Field(default=None, pattern=r"^[\x21-\x7e]+$")
    tool_configuration: MCPToolConfiguration | None = None


# --- bodies ------------------------------------------------------------------------------------


class PromptParams(RequestModel):
    """What both endpoints share: everything that makes up the prompt."""

    model: str
    messages: list[MessageParam]
    system: str | list[TextBlockParam] | None = None
    tools: list[ToolParam] | None = None
    tool_choice: ToolChoice | None = None
    thinking: ThinkingConfig | None = None
    output_config: OutputConfig | None = None
    cache_control: CacheControl | None = None
    mcp_servers: list[MCPServerDefinition] | None = None


class MessageCreateRequest(PromptParams):
    """The body of `POST /v1/messages`."""

    max_tokens: int
    stream: bool = False
    stop_sequences: list[str] | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    metadata: Metadata | None = None
    service_tier: Literal["auto", "standard_only"] | None = None
    container: str | dict[str, Any] | None = None


class CountTokensRequest(PromptParams):
    """The body of `POST /v1/messages/count_tokens`."""
