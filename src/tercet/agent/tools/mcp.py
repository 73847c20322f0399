"""MCP servers as agent tools, through the official MCP SDK (stdio, Streamable HTTP and SSE).

`McpServers` connects to every configured server (see `mcp_config`), lists its tools and
offers each as an `AgentTool` named as Claude Code names them, `mcp__<server>__<tool>`. A
server that cannot be started is reported in `McpServers.errors` (naming it and saying why:
the command was not found, the process exited, with the end of its stderr) and the others
still work.

Calls never raise into the agent's loop: a tool error, a timeout, a protocol error or a server
that died is an `is_error` result saying so (a stdio server's process is reaped before that
result is returned, so "exited" is true when it is read). A server found dead (a stdio process
that exited, an HTTP connection that failed) gets one attempt to reconnect at its next call. A
call is not repeated after the server died during it (it may have done its work), except on
HTTP when the server said it no longer knows the session (HTTP 404: the call never ran).

Each session is a `mcp_connection.Connection`, usable from any task. `aclose` (or leaving
`async with`) ends every session, stopping stdio servers (stdin closed, then SIGTERM and
SIGKILL to the process group) and reaping them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

import anyio
from mcp.shared.exceptions import MCPError
from mcp_types import CONNECTION_CLOSED, PARSE_ERROR, Tool
from pydantic import ValidationError

from tercet.agent.tools.base import ToolContext, ToolResult, one_line
from tercet.agent.tools.mcp_config import (
    McpConfig,
    McpConfigError,
    McpServerConfig,
    find_mcp_config,
    load_mcp_config,
)
from tercet.agent.tools.mcp_connection import Connection, McpServerError
from tercet.mcp.pool import read_only_hint, render_content

logger = logging.getLogger(__name__)

NAME_PREFIX = "mcp__"
MAX_NAME_CHARS = 64  # the Messages API's limit for a tool name
MAX_DESCRIPTION_CHARS = 2048  # as Claude Code cuts MCP tool descriptions
_MAX_TOOL_PAGES = 100


class McpServerTool:
    """One tool of an MCP server, offered to the model as `mcp__<server>__<tool>`."""

    concurrent_reads = True  # a session multiplexes calls; read-only ones may overlap

    def __init__(self, name: str, server: _Server, tool: Tool) -> None:
        self.name = name
        self.server_name = server.name
        self.tool_name = tool.name
        self._server = server
        self._tool = tool

    def definition(self) -> dict[str, Any]:
        """A custom tool: the server's description and input schema, under our name."""
        description = self._tool.description or (
            f"The tool {self.tool_name!r} of the MCP server {self.server_name!r}."
        )
        if len(description) > MAX_DESCRIPTION_CHARS:
            description = description[: MAX_DESCRIPTION_CHARS - 1] + "…"
        schema = dict(self._tool.input_schema)
        schema.setdefault("type", "object")
        return {"name": self.name, "description": description, "input_schema": schema}

    @property
    def read_only_hint(self) -> bool | None:
        """The server's own word on the tool, as listed (`tercet.mcp.pool.read_only_hint`)."""
        return read_only_hint(self._tool)

    def is_read_only(self, input: dict[str, Any]) -> bool:
        """What the server's `readOnlyHint` says; a tool without one may change things."""
        annotations = self._tool.annotations
        return bool(annotations is not None and annotations.read_only_hint)

    def describe(self, input: dict[str, Any]) -> str:
        return f"{self.name}: {one_line(json.dumps(input, ensure_ascii=False))}"

    async def run(self, input: dict[str, Any], ctx: ToolContext) -> ToolResult:
        return await self._server.call(self.tool_name, input)

    async def aclose(self) -> None:
        """Shut down this tool's server (shared by its sibling tools, which then fail too)."""
        await self._server.close()


class McpServers:
    """The configured MCP servers, connected, and their tools as `AgentTool`s.

    Use as `async with McpServers(config) as servers: ... servers.tools ...`, or call `start`
    and `aclose`. Servers that failed to start are in `errors`; the rest offer their tools.
    """

    def __init__(
        self,
        config: McpConfig | Mapping[str, McpServerConfig],
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        connect_timeout_s: float = 30.0,
        call_timeout_s: float = 300.0,
        max_output_chars: int = 50_000,
    ) -> None:
        """`cwd` is where stdio servers without a `cwd` of their own run (by default the
        configuration file's directory, else the current one); `env` the environment they
        start from (by default this process's), under their own `env`."""
        if not isinstance(config, McpConfig):
            config = McpConfig(dict(config))
        self.config = config
        directory = cwd or config.base_dir or Path.cwd()
        self._servers = [
            _Server(
                name,
                server,
                cwd=directory,
                env=dict(os.environ if env is None else env),
                connect_timeout_s=connect_timeout_s,
                call_timeout_s=call_timeout_s,
                max_output_chars=max_output_chars,
                unset_variables=config.unset_variables.get(name, []),
            )
            for name, server in config.servers.items()
        ]
        self.tools: list[McpServerTool] = []
        """Every connected server's tools, in the configuration's order."""
        self.errors: dict[str, str] = {}
        """The servers that could not be started, with the reason."""
        self._started = False

    @classmethod
    def for_project(cls, cwd: Path, **options: Any) -> McpServers:
        """The servers of the project's `.mcp.json` (see `find_mcp_config`), none if it has
        none; `McpConfigError` if the file is malformed. `options` as for the constructor."""
        path = find_mcp_config(cwd)
        config = load_mcp_config(path) if path is not None else McpConfig({})
        return cls(config, **options)

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Connect to every server at once and list its tools; failures go to `errors`.
        Cancelled, it shuts down every server before it returns."""
        if self._started:
            return
        self._started = True
        outcomes: dict[str, list[Tool] | Exception] = {}

        async def start(server: _Server) -> None:
            try:
                outcomes[server.name] = await server.start()
            except Exception as exc:
                outcomes[server.name] = exc

        try:
            # A task group, not gather: cancelled, it waits for each start to clean up.
            async with anyio.create_task_group() as group:
                for server in self._servers:
                    group.start_soon(start, server)
        except BaseException:  # cancelled: leave no server running
            await self.aclose()
            raise
        taken: set[str] = set()
        for server in self._servers:
            outcome = outcomes[server.name]
            if isinstance(outcome, Exception):
                error = outcome if isinstance(outcome, McpServerError) else None
                message = str(error) if error else f"MCP server {server.name!r}: {outcome!r}"
                self.errors[server.name] = message
                logger.info("%s", message)
                continue
            listed = {tool.name: tool for tool in reversed(outcome)}  # the first of a name
            for tool in (tool for tool in outcome if listed[tool.name] is tool):
                name = _unique_name(
                    tool_name(server.name, tool.name), server.name, tool.name, taken
                )
                taken.add(name)
                self.tools.append(McpServerTool(name, server, tool))

    async def aclose(self) -> None:
        """Shut every server down (stdio processes stopped and reaped); calls then fail."""
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as group:
                for server in self._servers:
                    group.start_soon(server.close)


def tool_name(server: str, tool: str) -> str:
    """Claude Code's name for an MCP tool: `mcp__<server>__<tool>`, each part with characters
    other than letters, digits, `_` and `-` replaced by `_` (uniqueness and the 64-character
    limit are `McpServers`' business)."""
    return f"{NAME_PREFIX}{_sanitize(server)}__{_sanitize(tool)}"


def _sanitize(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


def _unique_name(name: str, server: str, tool: str, taken: set[str]) -> str:
    """`name`, or when it is too long or taken, cut and given a hash of the real names."""
    if len(name) <= MAX_NAME_CHARS and name not in taken:
        return name
    digest = hashlib.sha256(f"{server}\0{tool}".encode()).hexdigest()
    for length in range(8, len(digest) + 1):
        candidate = f"{name[: MAX_NAME_CHARS - length - 1]}_{digest[:length]}"
        if candidate not in taken:
            return candidate
    raise AssertionError("unreachable: distinct tools have distinct hashes")


# One server


class _Server:
    """One configured server: its current connection, replaced when it dies."""

    def __init__(
        self,
        name: str,
        config: McpServerConfig,
        *,
        cwd: Path,
        env: dict[str, str],
        connect_timeout_s: float,
        call_timeout_s: float,
        max_output_chars: int,
        unset_variables: list[str],
    ) -> None:
        self.name = name
        self.config = config
        self.cwd = cwd
        self.env = env
        self.connect_timeout_s = connect_timeout_s
        self.call_timeout_s = call_timeout_s
        self.max_output_chars = max_output_chars
        self.unset_variables = unset_variables
        self._connection: Connection | None = None
        self._opening: Connection | None = None
        self._lock = asyncio.Lock()  # one connect at a time; calls run concurrently
        self._closed = False

    async def start(self) -> list[Tool]:
        """Connect and list the tools; `McpServerError` if either fails."""
        async with self._lock:
            connection = await self._connect()
        try:
            return await self._list_tools(connection)
        except McpServerError:
            await self.close()
            raise

    async def call(self, tool: str, arguments: dict[str, Any]) -> ToolResult:
        """Call `tool`; whatever goes wrong is an `is_error` result naming the server."""
        for attempt in range(2):
            try:
                connection = await self._live_connection()
            except McpServerError as exc:
                return ToolResult(str(exc), is_error=True)
            try:
                return await self._call(connection, tool, arguments)
            except _SessionLost as lost:
                if attempt:
                    return ToolResult(str(lost), is_error=True)
        raise AssertionError("unreachable")

    async def close(self) -> None:
        """End the session for good (later calls fail); safe to call more than once."""
        self._closed = True
        if self._opening is not None:
            await self._opening.close()  # a connect in progress gives up now
        async with self._lock:
            connection, self._connection = self._connection, None
        if connection is not None:
            await connection.close()

    async def _live_connection(self) -> Connection:
        """The open connection; a dead one is replaced (one attempt, per call)."""
        async with self._lock:
            current = self._connection
            if current is not None and current.alive():
                return current
            if current is not None:
                self._connection = None
                await current.close()
            try:
                return await self._connect()
            except McpServerError as exc:
                if current is None:
                    raise
                raise McpServerError(
                    self.name, f"it stopped, and restarting it failed: {exc.reason}"
                ) from None

    async def _connect(self) -> Connection:
        if self._closed:
            raise McpServerError(self.name, "it has been shut down")
        connection = Connection(
            self.name,
            self.config,
            cwd=self.cwd,
            env=self.env,
            connect_timeout_s=self.connect_timeout_s,
            read_timeout_s=max(300.0, self.call_timeout_s + 60.0),
        )
        self._opening = connection
        try:
            await connection.open()
        except McpServerError as exc:
            if self.unset_variables:
                unset = ", ".join(f"${{{name}}}" for name in self.unset_variables)
                note = f" (its configuration uses {unset}, which is not set)"
                raise McpServerError(self.name, exc.reason + note) from None
            raise
        finally:
            self._opening = None
        if self._closed:  # shut down while connecting
            await connection.close()
            raise McpServerError(self.name, "it has been shut down")
        self._connection = connection
        return connection

    async def _list_tools(self, connection: Connection) -> list[Tool]:
        client = connection.client()
        if client.server_capabilities.tools is None:
            return []  # a server of prompts or resources only
        tools: list[Tool] = []
        cursor: str | None = None
        try:
            with anyio.fail_after(self.connect_timeout_s):
                for _ in range(_MAX_TOOL_PAGES):
                    page = await client.list_tools(cursor=cursor)
                    tools.extend(page.tools)
                    cursor = page.next_cursor
                    if cursor is None:
                        break
        except TimeoutError:
            raise McpServerError(
                self.name, f"it did not list its tools within {self.connect_timeout_s:g}s"
            ) from None
        except MCPError as exc:
            raise McpServerError(
                self.name, f"listing its tools failed: {connection.quote(exc.message)}"
            ) from None
        except ValidationError:
            raise McpServerError(self.name, "it sent a malformed tool list") from None
        except Exception as exc:
            raise McpServerError(
                self.name, f"listing its tools failed: {connection.describe(exc)}"
            ) from None
        return tools

    async def _call(
        self, connection: Connection, tool: str, arguments: dict[str, Any]
    ) -> ToolResult:
        what = f"the call of {tool!r}"
        seen = connection.http.count
        try:
            client = connection.client()
            with anyio.fail_after(self.call_timeout_s):
                result = await client.call_tool(tool, arguments)
        except TimeoutError:
            return self._error(
                f"{what} did not finish within {self.call_timeout_s:g}s and was cancelled"
            )
        except McpServerError as exc:
            return ToolResult(str(exc), is_error=True)
        except MCPError as exc:
            statuses = connection.http.since(seen)
            if 404 in statuses:
                connection.failed = True
                raise _SessionLost(
                    f"MCP server {self.name!r}: it no longer knows this session (HTTP 404)"
                ) from None
            if exc.code == CONNECTION_CLOSED or any(s in (401, 403) or s >= 500 for s in statuses):
                connection.failed = True
                return self._error(await connection.lost(what, statuses))
            if exc.code == PARSE_ERROR:
                return self._error(f"it sent an unreadable answer to {what}")
            return self._error(
                f"it answered {what} with an error: {connection.quote(exc.message)} "
                f"(code {exc.code})"
            )
        except ValidationError:
            return self._error(f"it sent a malformed result for {what}")
        except Exception as exc:
            connection.failed = True
            return self._error(f"{what} failed: {connection.describe(exc)}")
        return ToolResult(self._text(render_content(result), result.is_error), result.is_error)

    def _error(self, reason: str) -> ToolResult:
        return ToolResult(f"MCP server {self.name!r}: {reason}", is_error=True)

    def _text(self, blocks: list[dict[str, Any]], is_error: bool) -> str:
        text = "\n".join(block["text"] for block in blocks)
        if not text:
            return "(the tool reported an error without a message)" if is_error else "(no output)"
        if len(text) > self.max_output_chars:
            left_out = len(text) - self.max_output_chars
            text = (
                f"{text[: self.max_output_chars]}\n[... {left_out} more characters of the "
                "tool's output left out ...]"
            )
        return text


class _SessionLost(Exception):
    """An HTTP session the server no longer knows: the call was refused, not run."""


__all__ = [
    "MAX_NAME_CHARS",
    "McpConfigError",
    "McpServerError",
    "McpServerTool",
    "McpServers",
    "tool_name",
]
