"""Base classes shared by every wire model."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


class RequestModel(BaseModel):
    """A model of something a client sends.

    Unknown fields are ignored rather than rejected: Claude Code and newer SDKs send fields
    that this server does not know yet, and refusing them would break those clients.
    """

    model_config = ConfigDict(extra="ignore")


class ResponseModel(BaseModel):
    """A model of something the server sends; serialised with every declared field."""

    model_config = ConfigDict(extra="forbid")


class CacheControl(RequestModel):
    """A prompt-cache breakpoint marker (`cache_control`)."""

    type: Literal["ephemeral"] = "ephemeral"
    ttl: Literal["5m", "1h"] | None = None
