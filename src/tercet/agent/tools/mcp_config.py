"""MCP server configuration as data, in the shape of Claude Code's `.mcp.json`.

```json
{"mcpServers": {
  "files": {"command": "npx", "args": ["-y", "some-mcp-server"], "env": {"KEY": "${KEY}"}},
  "remote": {"type": "http", "url": "https://example.com/mcp",
             "headers": {"Authorization": "Bearer ${TOKEN}"}},
  "legacy": {"type": "sse", "url": "http://localhost:9000/sse"}
}}
```

A server with `command` (and no `type`, or `"type": "stdio"`) is a subprocess spoken to over
its stdin and stdout; `http` is Streamable HTTP, `sse` the older HTTP+SSE transport. As in
Claude Code, `${VAR}` and `${VAR:-default}` are expanded in `command`, `args`, `env`, `url`
and `headers` (and `cwd`); a variable that is not set is left as written and reported in
`McpConfig.unset_variables`. Fields other tools add are ignored. A relative `cwd` is relative
to the file's directory, where a stdio server runs when it names none.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, TypeAdapter, ValidationError

CONFIG_FILE = ".mcp.json"
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_EXPANDED_FIELDS = ("command", "args", "env", "url", "headers", "cwd")
_KINDS = ("stdio", "http", "sse")


class McpConfigError(Exception):
    """The MCP configuration cannot be used; the message names the file, server and field."""


class _ServerModel(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class StdioServerConfig(_ServerModel):
    """A server run as a subprocess, spoken to over its stdin and stdout."""

    type: Literal["stdio"] = "stdio"
    command: str = Field(min_length=1)
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    """Set for the server on top of the agent's own environment."""
    cwd: str | None = None
    """Where the server runs; by default the project directory."""


class HttpServerConfig(_ServerModel):
    """A server reached over Streamable HTTP."""

    type: Literal["http"]
    url: str = Field(min_length=1)
    headers: dict[str, str] = Field(default_factory=dict)


class SseServerConfig(_ServerModel):
    """A server reached over the HTTP+SSE transport (MCP before 2025-03-26)."""

    type: Literal["sse"]
    url: str = Field(min_length=1)
    headers: dict[str, str] = Field(default_factory=dict)


def _server_kind(value: Any) -> str | None:
    """The union's tag: `type` when given, else `stdio` for an entry with a `command`."""
    if isinstance(value, BaseModel):
        return getattr(value, "type", None)
    if not isinstance(value, dict):
        return None
    kind = value.get("type")
    if kind is None and "command" in value:
        return "stdio"
    return kind if isinstance(kind, str) else None


McpServerConfig = Annotated[
    Annotated[StdioServerConfig, Tag("stdio")]
    | Annotated[HttpServerConfig, Tag("http")]
    | Annotated[SseServerConfig, Tag("sse")],
    Discriminator(
        _server_kind,
        custom_error_type="invalid_server",
        custom_error_message=(
            'a server needs a "command" (stdio), or "type": "http" or "sse" with a "url"'
        ),
    ),
]
"""One server's configuration: stdio, http or sse."""

_SERVER = TypeAdapter[McpServerConfig](McpServerConfig)


@dataclass(frozen=True)
class McpConfig:
    """The MCP servers to connect to, by name, and where their configuration came from."""

    servers: dict[str, McpServerConfig]
    base_dir: Path | None = None
    """The directory of the file they came from: where stdio servers run by default."""
    unset_variables: dict[str, list[str]] = field(default_factory=dict)
    """Per server, the `${VAR}`s that were not set in the environment (left as written)."""


def load_mcp_config(path: Path, environ: Mapping[str, str] | None = None) -> McpConfig:
    """Read a `.mcp.json` file; `McpConfigError` says what is wrong with it, and where."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise McpConfigError(f"Cannot read the MCP configuration {path}: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise McpConfigError(
            f"{path} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    base_dir = path.parent.absolute()
    return parse_mcp_config(data, base_dir=base_dir, environ=environ, source=str(path))


def parse_mcp_config(
    data: object,
    *,
    base_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
    source: str = "the MCP configuration",
) -> McpConfig:
    """Validate `.mcp.json` data already parsed from JSON, expanding `${VAR}`s from `environ`
    (the process environment by default) and resolving relative `cwd`s against `base_dir`."""
    environ = os.environ if environ is None else environ
    if not isinstance(data, dict) or not isinstance(data.get("mcpServers"), dict):
        raise McpConfigError(f'{source}: expected a JSON object with an "mcpServers" object')
    servers: dict[str, McpServerConfig] = {}
    unset: dict[str, list[str]] = {}
    for name, entry in data["mcpServers"].items():
        if not name.strip():
            raise McpConfigError(f"{source}: a server's name is empty")
        if not isinstance(entry, dict):
            raise McpConfigError(f"{source}: server {name!r}: expected a JSON object")
        kind = entry.get("type")
        if kind is not None and kind not in _KINDS:
            raise McpConfigError(
                f"{source}: server {name!r}: unknown type {kind!r} (expected one of "
                f"{', '.join(map(repr, _KINDS))})"
            )
        missing: list[str] = []
        expanded = {
            key: _expand(value, environ, missing) if key in _EXPANDED_FIELDS else value
            for key, value in entry.items()
        }
        try:
            server = _SERVER.validate_python(expanded)
        except ValidationError as exc:
            raise McpConfigError(f"{source}: server {name!r}: {_describe(exc)}") from None
        if isinstance(server, StdioServerConfig) and server.cwd and base_dir is not None:
            cwd = Path(server.cwd).expanduser()
            server = server.model_copy(update={"cwd": str(base_dir / cwd)})
        servers[name] = server
        if missing:
            unset[name] = sorted(set(missing))
    return McpConfig(servers, base_dir, unset)


def find_mcp_config(cwd: Path) -> Path | None:
    """The project's `.mcp.json`: the nearest one from `cwd` up to the repository's root (the
    directory holding `.git`); outside a repository, only `cwd`'s own."""
    directory = Path(os.path.abspath(cwd))
    folders = [directory, *directory.parents]
    root = next((i for i, folder in enumerate(folders) if (folder / ".git").exists()), 0)
    for folder in folders[: root + 1]:
        candidate = folder / CONFIG_FILE
        if candidate.is_file():
            return candidate
    return None


def expand_variables(
    text: str, environ: Mapping[str, str], missing: list[str] | None = None
) -> str:
    """`text` with `${VAR}` and `${VAR:-default}` replaced as Claude Code does: an unset (or,
    with a default, empty) variable gives the default; with none it stays as written and its
    name is added to `missing`."""

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        value = environ.get(name)
        if default is not None:
            return value if value else default
        if value is None:
            if missing is not None:
                missing.append(name)
            return match.group(0)
        return value

    return _VARIABLE.sub(substitute, text)


def _expand(value: object, environ: Mapping[str, str], missing: list[str]) -> object:
    """Expand variables in the strings of a field's value (a string, list or mapping)."""
    if isinstance(value, str):
        return expand_variables(value, environ, missing)
    if isinstance(value, list):
        return [_expand(item, environ, missing) for item in value]
    if isinstance(value, dict):
        return {key: _expand(item, environ, missing) for key, item in value.items()}
    return value


def _describe(exc: ValidationError) -> str:
    """Pydantic's errors as `field: message`, without the union's tag in the path."""
    parts = []
    for error in exc.errors():
        location = [str(part) for part in error["loc"]]
        if (
            error["type"] != "invalid_server"
            and location
            and location[0] in ("stdio", "http", "sse")
        ):
            location = location[1:]
        where = ".".join(location)
        parts.append(f"{where}: {error['msg']}" if where else error["msg"])
    return "; ".join(parts)


__all__ = [
    "CONFIG_FILE",
    "HttpServerConfig",
    "McpConfig",
    "McpConfigError",
    "McpServerConfig",
    "SseServerConfig",
    "StdioServerConfig",
    "expand_variables",
    "find_mcp_config",
    "load_mcp_config",
    "parse_mcp_config",
]
