"""Content blocks: what a message is made of, as clients send them and as the server answers.

Input blocks (`*Param`) follow the SDK's `ContentBlockParam` union; output blocks follow its
`ContentBlock` union. Both are discriminated by `type`, so an unknown block type is a clear 400.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from tercet.wire.base import CacheControl, RequestModel, ResponseModel

# --- sources of images and documents -------------------------------------------------------


class Base64ImageSource(RequestModel):
    type: Literal["base64"]
    media_type: Literal["image/jpeg", "image/png", "image/gif", "image/webp"]
    data: str


class URLImageSource(RequestModel):
    type: Literal["url"]
    url: str


class FileSource(RequestModel):
    """A Files API reference (`file_id`), valid for images and documents."""

    type: Literal["file"]
    file_id: str


ImageSource = Annotated[
    Base64ImageSource | URLImageSource | FileSource, Field(discriminator="type")
]


class Base64DocumentSource(RequestModel):
    type: Literal["base64"]
    media_type: str = "application/pdf"
    data: str


class PlainTextSource(RequestModel):
    type: Literal["text"]
    media_type: str = "text/plain"
    data: str


class ContentDocumentSource(RequestModel):
    type: Literal["content"]
    content: str | list[TextBlockParam | ImageBlockParam]


class URLDocumentSource(RequestModel):
    type: Literal["url"]
    url: str


DocumentSource = Annotated[
    Base64DocumentSource | PlainTextSource | ContentDocumentSource | URLDocumentSource | FileSource,
    Field(discriminator="type"),
]


# --- input blocks ------------------------------------------------------------------------------


class TextBlockParam(RequestModel):
    type: Literal["text"]
    text: str
    cache_control: CacheControl | None = None
    citations: list[dict[str, Any]] | None = None


class ImageBlockParam(RequestModel):
    type: Literal["image"]
    source: ImageSource
    cache_control: CacheControl | None = None


class DocumentBlockParam(RequestModel):
    type: Literal["document"]
    source: DocumentSource
    title: str | None = None
    context: str | None = None
    citations: dict[str, Any] | None = None
    cache_control: CacheControl | None = None


class SearchResultBlockParam(RequestModel):
    type: Literal["search_result"]
    source: str
    title: str
    content: list[TextBlockParam]
    cache_control: CacheControl | None = None


class ToolUseBlockParam(RequestModel):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]
    cache_control: CacheControl | None = None


ToolResultContent = Annotated[
    TextBlockParam | ImageBlockParam | DocumentBlockParam | SearchResultBlockParam,
    Field(discriminator="type"),
]


class ToolResultBlockParam(RequestModel):
    type: Literal["tool_result"]
    tool_use_id: str
    content: str | list[ToolResultContent] = ""
    is_error: bool | None = None
    cache_control: CacheControl | None = None


class ThinkingBlockParam(RequestModel):
    type: Literal["thinking"]
    thinking: str
    signature: str


class RedactedThinkingBlockParam(RequestModel):
    type: Literal["redacted_thinking"]
    data: str


class ServerToolUseBlockParam(RequestModel):
    type: Literal["server_tool_use"]
    id: str
    name: str
    input: dict[str, Any]
    cache_control: CacheControl | None = None


ServerToolResultType = Literal[
    "web_search_tool_result",
    "web_fetch_tool_result",
    "code_execution_tool_result",
    "bash_code_execution_tool_result",
    "text_editor_code_execution_tool_result",
    "tool_search_tool_result",
]


class ServerToolResultBlockParam(RequestModel):
    """Any server tool's result, echoed back by the client; its `content` is kept as sent."""

    type: ServerToolResultType
    tool_use_id: str
    content: Any
    cache_control: CacheControl | None = None


class MCPToolUseBlockParam(RequestModel):
    type: Literal["mcp_tool_use"]
    id: str
    name: str
    server_name: str
    input: dict[str, Any]
    cache_control: CacheControl | None = None


class MCPToolResultBlockParam(RequestModel):
    type: Literal["mcp_tool_result"]
    tool_use_id: str
    content: str | list[TextBlockParam] = ""
    is_error: bool | None = None
    cache_control: CacheControl | None = None


class ContainerUploadBlockParam(RequestModel):
    type: Literal["container_upload"]
    file_id: str
    cache_control: CacheControl | None = None


ContentBlockParam = Annotated[
    TextBlockParam
    | ImageBlockParam
    | DocumentBlockParam
    | SearchResultBlockParam
    | ToolUseBlockParam
    | ToolResultBlockParam
    | ThinkingBlockParam
    | RedactedThinkingBlockParam
    | ServerToolUseBlockParam
    | ServerToolResultBlockParam
    | MCPToolUseBlockParam
    | MCPToolResultBlockParam
    | ContainerUploadBlockParam,
    Field(discriminator="type"),
]

# Which input blocks each role may carry; anything else is a 400.
USER_BLOCK_TYPES = frozenset(
    {"text", "image", "document", "search_result", "tool_result", "container_upload"}
)
ASSISTANT_BLOCK_TYPES = frozenset(
    {
        "text",
        "thinking",
        "redacted_thinking",
        "tool_use",
        "server_tool_use",
        "web_search_tool_result",
        "web_fetch_tool_result",
        "code_execution_tool_result",
        "bash_code_execution_tool_result",
        "text_editor_code_execution_tool_result",
        "tool_search_tool_result",
        "mcp_tool_use",
        "mcp_tool_result",
        "container_upload",
    }
)


# --- output blocks -----------------------------------------------------------------------------


class TextBlock(ResponseModel):
    type: Literal["text"] = "text"
    text: str
    citations: list[dict[str, Any]] | None = None


class ThinkingBlock(ResponseModel):
    type: Literal["thinking"] = "thinking"
    thinking: str
    signature: str


class RedactedThinkingBlock(ResponseModel):
    type: Literal["redacted_thinking"] = "redacted_thinking"
    data: str


class ToolUseBlock(ResponseModel):
    type: Literal["tool_use"] = "tool_use"
    id: str
    name: str
    input: dict[str, Any]


class ServerToolUseBlock(ResponseModel):
    type: Literal["server_tool_use"] = "server_tool_use"
    id: str
    name: str
    input: dict[str, Any]


class ServerToolResultBlock(ResponseModel):
    """A server tool's result (code execution, web search, ...); `content` is tool-specific."""

    type: ServerToolResultType
    tool_use_id: str
    content: Any


class MCPToolUseBlock(ResponseModel):
    type: Literal["mcp_tool_use"] = "mcp_tool_use"
    id: str
    name: str
    server_name: str
    input: dict[str, Any]


class MCPToolResultBlock(ResponseModel):
    type: Literal["mcp_tool_result"] = "mcp_tool_result"
    tool_use_id: str
    is_error: bool = False
    content: str | list[TextBlock]


class ContainerUploadBlock(ResponseModel):
    type: Literal["container_upload"] = "container_upload"
    file_id: str


ContentBlock = Annotated[
    TextBlock
    | ThinkingBlock
    | RedactedThinkingBlock
    | ToolUseBlock
    | ServerToolUseBlock
    | ServerToolResultBlock
    | MCPToolUseBlock
    | MCPToolResultBlock
    | ContainerUploadBlock,
    Field(discriminator="type"),
]
