"""Response bodies: messages, usage, models and token counts."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from tercet.wire.base import ResponseModel
from tercet.wire.content import ContentBlock

StopReason = Literal[
    "end_turn",
    "max_tokens",
    "stop_sequence",
    "tool_use",
    "pause_turn",
    "refusal",
    "model_context_window_exceeded",
]


# The refusal categories Anthropic's API names; a refusal outside them has category null.
RefusalCategory = Literal["cyber", "bio", "frontier_llm", "reasoning_extraction", "general_harms"]


class RefusalStopDetails(ResponseModel):
    """Why a reply stopped with `stop_reason: "refusal"` (a classifier intervened)."""

    type: Literal["refusal"] = "refusal"
    category: RefusalCategory | None = None
    explanation: str | None = None


class CacheCreation(ResponseModel):
    ephemeral_5m_input_tokens: int = 0
    ephemeral_1h_input_tokens: int = 0


class ServerToolUsage(ResponseModel):
    web_search_requests: int = 0
    web_fetch_requests: int = 0


class OutputTokensDetails(ResponseModel):
    thinking_tokens: int = 0


class Usage(ResponseModel):
    """Token accounting. Total input = input + cache_creation_input + cache_read_input."""

    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation: CacheCreation = Field(default_factory=CacheCreation)
    server_tool_use: ServerToolUsage | None = None
    service_tier: Literal["standard", "priority", "batch"] = "standard"
    output_tokens_details: OutputTokensDetails | None = None


class Container(ResponseModel):
    id: str
    expires_at: str


class Message(ResponseModel):
    """The assistant's reply (`POST /v1/messages` without streaming)."""

    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[ContentBlock]
    stop_reason: StopReason | None = None
    stop_sequence: str | None = None
    stop_details: RefusalStopDetails | None = None
    usage: Usage
    container: Container | None = None


class MessageTokensCount(ResponseModel):
    """The answer of `POST /v1/messages/count_tokens`."""

    input_tokens: int


class ModelInfo(ResponseModel):
    type: Literal["model"] = "model"
    id: str
    display_name: str
    created_at: str
    max_input_tokens: int | None = None
    max_tokens: int | None = None
    capabilities: dict[str, Any] | None = None


class ModelList(ResponseModel):
    data: list[ModelInfo]
    first_id: str | None
    last_id: str | None
    has_more: bool
