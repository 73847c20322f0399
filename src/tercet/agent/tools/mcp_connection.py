"""One MCP session for the agent's MCP tools: a stdio subprocess, Streamable HTTP or SSE, entered
and left through the official SDK by an owner task of its own.

The SDK's transports are task groups that must be left by the task that entered them, while
the agent may call tools from any task; so `Connection.open` starts an owner task that enters
them, signals it is ready and waits to be told to close, and calls only send requests over its
session. A stdio server's stderr is read from a pipe of ours (its last lines kept for error
messages, and kept off the agent's terminal).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import os
from contextlib import AsyncExitStack
from pathlib import Path
from typing import IO

import anyio
import httpx2
from mcp.client import Client, IncomingMessage, Transport
from mcp.client.sse import sse_client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import CONNECTION_CLOSED, Implementation

from tercet.agent.tools.mcp_config import McpServerConfig, StdioServerConfig
from tercet.mcp.policy import redact_url

logger = logging.getLogger(__name__)

_CLIENT_INFO = Implementation(name="tercet-agent", version="0.1.0")
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


class HttpStatuses:
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


class StderrTail:
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


class Connection:
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
        self.http = HttpStatuses()
        self.failed = False  # the transport broke: replace the connection
        self._stderr: StderrTail | None = None
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
            self._stderr = StderrTail()
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

    async def lost(self, what: str, statuses: list[int]) -> str:
        """Why the connection broke during `what`, for the model.

        A stdio server's stdout ends a moment before its process does (the kernel closes a dying
        process's files before it becomes a zombie), so the session ends first: that waits for
        the process to exit and be reaped (killing it if it lingers, all bounded), and
        "the server process exited" is true by the time anyone reads it. The stderr quoted is
        then complete, too."""
        if isinstance(self.config, StdioServerConfig):
            await self.close()
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


__all__ = ["Connection", "HttpStatuses", "McpServerError", "StderrTail"]
