"""JSON bodies that always encode: text from outside (an MCP server's result, a tool's input)
may hold a lone UTF-16 surrogate, which is valid in JSON as an escape but cannot be UTF-8."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticSerializationError
from starlette.responses import JSONResponse


def model_json(model: BaseModel) -> str:
    """The model as JSON text, escaping what UTF-8 cannot hold (pydantic's fast path first)."""
    try:
        return model.model_dump_json()
    except PydanticSerializationError:
        return json.dumps(model.model_dump(mode="json"), separators=(",", ":"))


class JSONBody(JSONResponse):
    """Starlette's JSONResponse, but a lone surrogate is sent as its `\\u` escape, not a 500."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:
            return json.dumps(content, separators=(",", ":")).encode()
