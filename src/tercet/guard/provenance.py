"""Provenance: where a piece of content in the model's context came from, and whether it is
trusted (the policy's `[trust]` table decides when the source does not say)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

SourceKind = Literal["user", "system", "operator", "tool", "mcp", "file", "url"]
SOURCE_KINDS: tuple[SourceKind, ...] = ("user", "system", "operator", "tool", "mcp", "file", "url")


@dataclass(frozen=True)
class Source:
    """Where a piece of content came from."""

    kind: SourceKind
    name: str = ""  # the tool's name, the MCP server's, the file path, the URL
    trusted: bool | None = None  # None: the policy's default for `kind` (Policy.trusts)

    def __str__(self) -> str:
        return f"{self.kind} {self.name!r}" if self.name else self.kind
