"""MCP servers as agent tools, through the official MCP SDK (stdio, Streamable HTTP and SSE).

`McpServers` connects to every configured server (see `mcp_config`), lists its tools and
offers each as an `AgentTool` named as Claude Code names them, `mcp__<server>__<tool>`. A
server that cannot be started is reported in `McpServers.errors` (naming it and saying why:
the command was not found, the process exited, with the end of its stderr) and the others
still work.

Calls never raise into the agent's loop: a tool error, a timeout, a protocol error or a server
that died is an `is_error` result saying so. A server found dead (a stdio process that
exited, an HTTP connection that failed) gets one attempt to reconnect at its next call. A
call is not repeated after the server died during it (it may have done its work), except on
HTTP when the server said it no longer knows the session (HTTP 404: the call never ran).

The SDK's transports are task groups that must be left by the task that entered them, while
the agent may call tools from any task; so each connection has an owner task that enters
them, signals it is ready and waits to be told to close, and calls only send requests over
its session. `aclose` (or leaving `async with`) ends every session, stopping stdio servers
(stdin closed, then SIGTERM and SIGKILL to the process group) and reaping them.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Mapping
from contextlib import AsyncExitStack
from pathlib import Path
from typing import IO, Any, Self

import anyio
import httpx2
from mcp.client import Client, IncomingMessage, Transport
from mcp.client.sse import sse_client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import CONNECTION_CLOSED, PARSE_ERROR, Implementation, Tool
from pydantic import ValidationError

from tercet.agent.tools.base import ToolContext, ToolResult, one_line
from tercet.agent.tools.mcp_config import (
    McpConfig,
    McpConfigError,
    McpServerConfig,
    StdioServerConfig,
    find_mcp_config,
    load_mcp_config,
)
from tercet.mcp.policy import redact_url
from tercet.mcp.pool import render_content

logger = logging.getLogger(__name__)

NAME_PREFIX = "mcp__"
MAX_NAME_CHARS = 64  # the Messages API's limit for a tool name
MAX_DESCRIPTION_CHARS = 2048  # as Claude Code cuts MCP tool descriptions
_CLIENT_INFO = Implementation(name="tercet-agent", version="0.1.0")
_MAX_TOOL_PAGES = 100
# How long ending a session may take: the SDK gives a stdio server 2s to exit once its stdin
# closes, then 2s after SIGTERM, then 2s to see the SIGKILL land.
_CLOSE_GRACE_S = 10.0
_STDERR_KEPT_BYTES = 16_384
_STDERR_QUOTED_LINES = 12
_STDERR_QUOTED_CHARS = 1_500
_QUOTED_CHARS = 500  # of an error message from a server or the SDK


class McpServerError(Exception):
    """An MCP server could not be started or reached; the message names it and says why."""

    def __init__(self, server: str, reason: str) -> None:
        super().__init__(f"MCP server {server!r}: {reason}")
        self.server = server
        self.reason = reason


class McpServerTool:
    """One tool of an MCP server, offered to the model as `mcp__<server>__<tool>`."""

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
        self._connection: _Connection | None = None
        self._opening: _Connection | None = None
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

    async def _live_connection(self) -> _Connection:
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

    async def _connect(self) -> _Connection:
        if self._closed:
            raise McpServerError(self.name, "it has been shut down")
        connection = _Connection(
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

    async def _list_tools(self, connection: _Connection) -> list[Tool]:
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
        self, connection: _Connection, tool: str, arguments: dict[str, Any]
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
                return self._error(connection.lost(what, statuses))
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


# One connection


class _HttpStatuses:
    """The error statuses (4xx/5xx) an HTTP server answered on one connection, in order."""

    def __init__(self) -> None:
        self.count = 0
        self.recent: list[tuple[int, int]] = []  # (number, status), the last few

    async def record(self, response: httpx2.Response) -> None:
        if response.status_code >= 400:
            self.count += 1
            self.recent.append((self.count, response.status_code))
            del self.recent[:-16]

    def since(self, seen: int) -> list[int]:
        return [status for number, status in self.recent if number > seen]


class _StderrTail:
    """A stdio server's stderr, read from a pipe as it comes; the last bytes kept (so a chatty
    server costs bounded memory, and its output stays off the agent's terminal)."""

    def __init__(self) -> None:
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        self._fd: int | None = read_fd
        self.writer: IO[str] | None = open(write_fd, "w", encoding="utf-8")  # noqa: SIM115
        self._kept = bytearray()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(read_fd, self._read)

    def close_writer(self) -> None:
        """Our copy of the write end, closed once the server has its own."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def tail(self) -> str:
        """The last lines written, at most a screenful."""
        self._read()
        text = self._kept.decode("utf-8", "replace").rstrip()
        lines = text.splitlines()[-_STDERR_QUOTED_LINES:]
        text = "\n".join(lines)
        return text if len(text) <= _STDERR_QUOTED_CHARS else "…" + text[-_STDERR_QUOTED_CHARS:]

    def close(self) -> None:
        self.close_writer()
        self._read()
        self._stop()

    def _read(self) -> None:
        while self._fd is not None:
            try:
                chunk = os.read(self._fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            if not chunk:
                self._stop()
                return
            self._kept += chunk
            del self._kept[:-_STDERR_KEPT_BYTES]

    def _stop(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            self._loop.remove_reader(fd)
            os.close(fd)


class _Connection:
    """One MCP session, entered and left by its own owner task."""

    def __init__(
        self,
        server: str,
        config: McpServerConfig,
        *,
        cwd: Path,
        env: dict[str, str],
        connect_timeout_s: float,
        read_timeout_s: float,
    ) -> None:
        self.server = server
        self.config = config
        self.cwd = Path(config.cwd) if isinstance(config, StdioServerConfig) and config.cwd else cwd
        self.env = env
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.http = _HttpStatuses()
        self.failed = False  # the transport broke: replace the connection
        self._stderr: _StderrTail | None = None
        self._client: Client | None = None
        self._ready = anyio.Event()
        self._stop = anyio.Event()
        self._finished = anyio.Event()
        self._scope: anyio.CancelScope | None = None
        self._failure: BaseException | None = None
        self._timed_out = False
        self._task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        """Connect; `McpServerError` (with the process stopped) if that fails."""
        if isinstance(self.config, StdioServerConfig):
            if not self.cwd.is_dir():
                raise McpServerError(self.server, f"its working directory {self.cwd} is missing")
            self._stderr = _StderrTail()
        # Held here: the loop keeps only weak references to tasks. A fresh context, as the
        # connection outlives the call that opened it.
        self._task = asyncio.get_running_loop().create_task(
            self._own(), context=contextvars.Context()
        )
        try:
            with anyio.move_on_after(self.connect_timeout_s + _CLOSE_GRACE_S):
                await self._ready.wait()
        except BaseException:  # cancelled while connecting: leave no server running
            await self.close()
            raise
        if self._client is None or self._finished.is_set():
            self._timed_out = self._timed_out or not self._ready.is_set()
            await self.close()
            raise McpServerError(self.server, self._connect_error())

    def client(self) -> Client:
        if self._client is None:
            raise McpServerError(self.server, "its connection is closed")
        return self._client

    def alive(self) -> bool:
        """Whether calls may use this connection; else it is replaced."""
        if self.failed or self._finished.is_set() or self._client is None:
            return False
        # The session's dispatcher has seen its stream end (the process exited, the SSE stream
        # closed): a request would fail at once. The SDK has no public flag for it.
        session = getattr(self._client, "_session", None)  # None once the client has exited
        dispatcher = getattr(session, "_dispatcher", None)
        return session is not None and not getattr(dispatcher, "_closed", False)

    async def close(self) -> None:
        """End the session: politely, then by cancellation if that takes too long."""
        self._stop.set()
        if self._client is None and self._scope is not None:
            self._scope.cancel()  # still connecting: nobody waits for it any more
        if self._task is not None:
            with anyio.move_on_after(_CLOSE_GRACE_S, shield=True):
                await self._finished.wait()
            if not self._finished.is_set() and self._scope is not None:
                self._scope.cancel()
                with anyio.move_on_after(_CLOSE_GRACE_S, shield=True):
                    await self._finished.wait()
        if self._stderr is not None:
            self._stderr.close()

    def lost(self, what: str, statuses: list[int]) -> str:
        """Why the connection broke during `what`, for the model."""
        if isinstance(self.config, StdioServerConfig):
            return (
                f"the server process exited during {what} (it is restarted at the next call)"
                + self._stderr_note()
            )
        if any(s in (401, 403) for s in statuses):
            status = next(s for s in statuses if s in (401, 403))
            return f"it refused the request (HTTP {status}) during {what}; check its headers"
        shown = f" (HTTP {statuses[-1]})" if statuses else ""
        return f"the connection failed{shown} during {what} (it is reopened at the next call)"

    def describe(self, exc: BaseException) -> str:
        """`Type: message` of an exception, with the URL's query taken out."""
        text = self.quote(str(exc))
        return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

    def quote(self, text: str) -> str:
        """Text from the server or the SDK, without the URL's secrets, cut to a sane length."""
        url = getattr(self.config, "url", None)
        if url and url in text:
            text = text.replace(url, redact_url(url))
        return text if len(text) <= _QUOTED_CHARS else text[:_QUOTED_CHARS] + "…"

    async def _own(self) -> None:
        """The owner task: connect, then hold the session until told to stop."""
        try:
            if self._stop.is_set():
                return
            with anyio.CancelScope(deadline=anyio.current_time() + self.connect_timeout_s) as scope:
                self._scope = scope
                async with AsyncExitStack() as stack:
                    client = Client(
                        await self._transport(stack),
                        mode="auto",
                        cache=None,
                        client_info=_CLIENT_INFO,
                        message_handler=self._on_message,
                    )
                    try:
                        await stack.enter_async_context(client)
                    finally:
                        if self._stderr is not None:
                            self._stderr.close_writer()  # the server holds its own copy
                    self._client = client
                    scope.deadline = math.inf
                    self._ready.set()
                    await self._stop.wait()
            if scope.cancelled_caught and not self._ready.is_set() and not self._stop.is_set():
                self._timed_out = True
        except Exception as exc:
            self._failure = exc
        finally:
            self._client = None
            self.failed = True
            self._finished.set()
            self._ready.set()

    async def _transport(self, stack: AsyncExitStack) -> Transport:
        config = self.config
        if isinstance(config, StdioServerConfig):
            assert self._stderr is not None and self._stderr.writer is not None
            parameters = StdioServerParameters(
                command=config.command,
                args=config.args,
                env={**self.env, **config.env},
                cwd=self.cwd,
            )
            # The SDK types errlog as TextIO; a text file over the pipe is what it needs.
            return stdio_client(parameters, errlog=self._stderr.writer)  # type: ignore[arg-type]
        hooks = {"response": [self.http.record]}
        if config.type == "sse":

            def client_factory(
                headers: dict[str, str] | None = None,
                timeout: httpx2.Timeout | None = None,
                auth: httpx2.Auth | None = None,
            ) -> httpx2.AsyncClient:
                return httpx2.AsyncClient(
                    headers=headers, timeout=timeout, auth=auth, event_hooks=hooks
                )

            return sse_client(
                config.url,
                headers=dict(config.headers),
                timeout=self.connect_timeout_s,
                sse_read_timeout=self.read_timeout_s,
                httpx_client_factory=client_factory,
            )
        http_client = httpx2.AsyncClient(
            headers=config.headers,
            timeout=httpx2.Timeout(self.connect_timeout_s, read=self.read_timeout_s),
            event_hooks=hooks,
        )
        await stack.enter_async_context(http_client)
        return streamable_http_client(config.url, http_client=http_client)

    async def _on_message(self, message: IncomingMessage) -> None:
        if isinstance(message, Exception):
            # On HTTP the transport reports a broken stream this way: reconnect next time.
            # A stdio server's stray line on stdout is no reason to restart it.
            if isinstance(self.config, StdioServerConfig):
                logger.debug("MCP server %r wrote a line that is not MCP", self.server)
            else:
                self.failed = True

    def _connect_error(self) -> str:
        """Why the connection could not be opened, for the user."""
        config = self.config
        failure = _leaf(self._failure) if self._failure is not None else None
        if isinstance(config, StdioServerConfig):
            command = config.command
            if isinstance(failure, FileNotFoundError):
                return f"could not start {command!r}: command not found"
            if isinstance(failure, PermissionError):
                return f"could not start {command!r}: permission denied (is it executable?)"
            if isinstance(failure, OSError):
                return f"could not start {command!r}: {failure.strerror or failure}"
            if self._timed_out:
                reason = f"{command!r} did not complete the MCP handshake within "
                return reason + f"{self.connect_timeout_s:g}s" + self._stderr_note()
            if failure is None or (
                isinstance(failure, MCPError) and failure.code == CONNECTION_CLOSED
            ):
                return f"{command!r} exited before completing the MCP handshake" + (
                    self._stderr_note()
                )
        shown = redact_url(config.url) if not isinstance(config, StdioServerConfig) else ""
        statuses = self.http.since(0)
        auth = next((s for s in statuses if s in (401, 403)), None)
        if auth is not None:
            return f"{shown} refused the request (HTTP {auth}); check its headers"
        if self._timed_out or isinstance(failure, httpx2.TimeoutException):
            return f"timed out connecting to {shown} after {self.connect_timeout_s:g}s"
        if isinstance(failure, httpx2.ConnectError):
            return f"could not connect to {shown}: {self.describe(failure)}"
        status = f" (HTTP {statuses[-1]})" if statuses else ""
        if isinstance(failure, MCPError):
            where = shown or "the server"
            note = self._stderr_note()
            return f"{where} refused the MCP handshake{status}: {self.quote(failure.message)}{note}"
        if failure is None:
            return f"the connection to {shown} was closed{status}"
        return f"could not use {shown or 'the server'}{status}: {self.describe(failure)}"

    def _stderr_note(self) -> str:
        tail = self._stderr.tail() if self._stderr is not None else ""
        if not tail:
            return ""
        return "; its stderr ends with:\n" + tail


def _leaf(exc: BaseException) -> BaseException:
    """The first real error inside (nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        errors = [e for e in exc.exceptions if not isinstance(e, asyncio.CancelledError)]
        exc = (errors or list(exc.exceptions))[0]
    return exc


__all__ = [
    "MAX_NAME_CHARS",
    "McpConfigError",
    "McpServerError",
    "McpServerTool",
    "McpServers",
    "tool_name",
]
