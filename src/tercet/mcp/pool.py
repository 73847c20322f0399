"""McpPool: MCP client sessions to remote servers, pooled per (URL, token), for the MCP connector.

The SDK's transports and `ClientSession` are async context managers whose task groups belong
to the task that entered them, while the pool is used from many request tasks. So each
connection has one owner task that enters them, signals it is ready, and waits to be told to
close; request tasks only send requests over the session, concurrently. A connection whose
transport fails (the server died, the session was lost) is dropped and the next use
reconnects; one unused for `idle_timeout_s` is closed by a reaper task.

`call_tool` never raises for anything the server does: a failure is an `is_error` result the
model can read. Tokens are keyed by hash, and no message or log line carries one.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import json
import logging
import math
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import anyio
import httpx2
from mcp.client import Client, IncomingMessage, Transport
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import (
    CONNECTION_CLOSED,
    PARSE_ERROR,
    AudioContent,
    CallToolResult,
    ContentBlock,
    EmbeddedResource,
    ImageContent,
    Implementation,
    ResourceLink,
    TextContent,
    TextResourceContents,
    Tool,
    ToolListChangedNotification,
)
from pydantic import ValidationError

from tercet.mcp.policy import DEFAULT_POLICY, UrlPolicy, redact_url

TransportKind = Literal["streamable-http", "sse"]

logger = logging.getLogger(__name__)

_CLIENT_INFO = Implementation(name="tercet", version="0.1.0")
_MAX_TOOL_PAGES = 100
# How long a closing connection may take to end its session (DELETE, stream shutdown).
_CLOSE_GRACE_S = 5.0
# The most of a server's own error text quoted in a message (the rest is cut).
_QUOTED_CHARS = 300
_URL_QUERY = re.compile(r"(https?://[^\s'\"?#]*)[?#][^\s'\"]*", re.IGNORECASE)


@dataclass(frozen=True)
class McpTool:
    """A tool an MCP server offers: its name, description and JSON Schema for the input;
    `read_only_hint` is the server's own word from its annotations (False when it says
    `destructiveHint`, else its `readOnlyHint`; None when it said neither)."""

    name: str
    description: str
    input_schema: dict[str, Any]
    read_only_hint: bool | None = None


@dataclass(frozen=True)
class McpCallResult:
    """A tool call's outcome as Anthropic text blocks; `is_error` for failures of any kind."""

    content: list[dict[str, Any]]
    is_error: bool


class McpError(Exception):
    """The MCP server could not be reached or spoke no usable MCP; says which URL (no query)."""


class McpAuthError(McpError):
    """The MCP server refused the authorization token (HTTP 401 or 403)."""


class McpPoolFull(McpError):
    """Every one of the pool's `max_connections` is in use: the server is busy, try later."""


class McpPool:
    """MCP sessions shared by all requests: one per (server URL, token), reused until idle.

    `list_tools` raises `McpError` (`McpAuthError` for a refused token) when the server cannot
    be used; `call_tool` returns failures as `is_error` results. Both raise `McpUrlRefused`
    for a URL the policy does not allow. Call `aclose` on shutdown.
    """

    def __init__(
        self,
        *,
        policy: UrlPolicy = DEFAULT_POLICY,
        idle_timeout_s: float = 300.0,
        connect_timeout_s: float = 10.0,
        call_timeout_s: float = 60.0,
        max_connections: int = 256,
    ) -> None:
        self.policy = policy
        # Each connection holds a socket and a few tasks, and a request picks its URLs and
        # tokens: without a bound, varying them would use up the server's file descriptors.
        self.max_connections = max_connections
        self.idle_timeout_s = idle_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.call_timeout_s = call_timeout_s
        self._connections: dict[tuple[str, str], _Connection] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._reaper: asyncio.Task[None] | None = None
        self._counts: Counter[str] = Counter()
        self._closed = False

    async def list_tools(self, url: str, token: str | None) -> list[McpTool]:
        """The server's tools (all pages), fetched once per connection."""
        self.policy.check(url)
        for attempt in range(2):
            async with self._use(url, token) as (connection, reused):
                if connection.tools is not None:
                    return list(connection.tools)
                try:
                    connection.tools = await self._fetch_tools(connection)
                    return list(connection.tools)
                except McpAuthError:
                    raise
                except McpError:
                    # Listing changes nothing: a pooled connection that broke (the server
                    # restarted, the session expired) is worth one fresh try.
                    if attempt or not (reused and connection.failed):
                        raise
        raise AssertionError("unreachable")

    async def call_tool(
        self, url: str, token: str | None, name: str, arguments: dict[str, Any]
    ) -> McpCallResult:
        """Call one tool; whatever goes wrong on the server's side is an `is_error` result."""
        self.policy.check(url)
        self._counts["calls"] += 1
        for attempt in range(2):
            try:
                async with self._use(url, token) as (connection, reused):
                    return await self._call(connection, reused, name, arguments)
            except _SessionLost as lost:
                # The server did not know the session (it restarted, or expired it): the
                # call never ran, so it is safe to make once more on a new session.
                if attempt:
                    return lost.result
            except McpError as exc:
                return _error_result(str(exc))
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        """Close every connection and stop the reaper; the pool refuses further use."""
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            self._track(self._reaper)  # awaited below, like the closes
            self._reaper = None
        connections = list(self._connections.values())
        self._connections.clear()
        for connection in connections:
            self._close_in_background(connection)
        pending = set(self._background)
        while pending:  # a close may still be dropping others
            await asyncio.wait(pending)
            pending = {task for task in self._background if not task.done()}

    def stats(self) -> dict[str, int]:
        """Counters for tests and metrics: `connections` pooled now (open or opening), requests
        `in_flight` on them, and since the start: `connects`, `calls`, connections
        `closed_idle`, `dropped` after a failure, `evicted` to make room, and
        `connect_failures`."""
        return {
            "connections": len(self._connections),
            "in_flight": sum(c.in_flight for c in self._connections.values()),
            "connects": self._counts["connects"],
            "calls": self._counts["calls"],
            "closed_idle": self._counts["closed_idle"],
            "dropped": self._counts["dropped"],
            "evicted": self._counts["evicted"],
            "connect_failures": self._counts["connect_failures"],
        }

    # Connections

    @asynccontextmanager
    async def _use(self, url: str, token: str | None) -> AsyncIterator[tuple[_Connection, bool]]:
        """A ready connection for (url, token), counted as in use until the block ends, and
        whether it was open before this use (so a failure may mean it went stale)."""
        if self._closed:
            raise McpError("the MCP connection pool is closed")
        key = (url, _token_key(token))
        connection = self._connections.get(key)
        if connection is not None and not connection.usable(self.idle_timeout_s):
            self._drop(connection, "dropped" if connection.failed else "closed_idle")
            connection = None
        if connection is None:
            self._make_room()
            connection = _Connection(
                url,
                token,
                connect_timeout_s=self.connect_timeout_s,
                read_timeout_s=self.idle_timeout_s + self.call_timeout_s + 60.0,
                on_open=lambda: self._counts.update(["connects"]),
            )
            self._connections[key] = connection
            connection.start()
            self._ensure_reaper()
        connection.in_flight += 1
        try:
            reused = connection.opened
            await connection.wait_ready()
            yield connection, reused
        finally:
            connection.in_flight -= 1
            connection.last_used = time.monotonic()
            if connection.failed:
                self._drop(connection, "dropped" if connection.opened else "connect_failures")

    def _make_room(self) -> None:
        """Below `max_connections` before a new connection: the least recently used idle one
        is closed; with none idle, `McpPoolFull`."""
        if len(self._connections) < self.max_connections:
            return
        idle = [c for c in self._connections.values() if c.in_flight == 0]
        if not idle:
            raise McpPoolFull(
                f"all {self.max_connections} MCP connections of this server are in use; "
                "try again later"
            )
        self._drop(min(idle, key=lambda c: c.last_used), "evicted")

    def _drop(self, connection: _Connection, reason: str) -> None:
        """Take the connection out of the pool (if still there) and close it in the background."""
        if self._connections.get(connection.key) is connection:
            del self._connections[connection.key]
            self._counts[reason] += 1
            logger.info("MCP connection to %s closed (%s)", redact_url(connection.url), reason)
            self._close_in_background(connection)

    def _close_in_background(self, connection: _Connection) -> None:
        self._track(_spawn(connection.close()))

    def _track(self, task: asyncio.Task[None]) -> None:
        """Hold a background task until it ends (the loop keeps only weak references)."""
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _ensure_reaper(self) -> None:
        if self._reaper is None or self._reaper.done():
            self._reaper = _spawn(self._reap())

    async def _reap(self) -> None:
        """Close connections idle for `idle_timeout_s`; ends when the pool is empty."""
        interval = max(0.05, min(self.idle_timeout_s / 4, 30.0))
        while self._connections:
            await asyncio.sleep(interval)
            for connection in list(self._connections.values()):
                if not connection.usable(self.idle_timeout_s) and connection.in_flight == 0:
                    self._drop(connection, "dropped" if connection.failed else "closed_idle")
        self._reaper = None

    # Requests

    async def _fetch_tools(self, connection: _Connection) -> list[McpTool]:
        client = connection.client()
        shown = redact_url(connection.url)
        seen = connection.http.failures
        tools: list[McpTool] = []
        cursor: str | None = None
        try:
            with anyio.fail_after(self.call_timeout_s):
                for _ in range(_MAX_TOOL_PAGES):
                    page = await client.list_tools(cursor=cursor)
                    tools.extend(_tool(tool) for tool in page.tools)
                    cursor = page.next_cursor
                    if cursor is None:
                        break
        except TimeoutError:
            raise McpError(
                f"The MCP server {shown} did not list its tools within {self.call_timeout_s:g}s"
            ) from None
        except MCPError as exc:
            connection.note_failure(exc, seen)
            auth = connection.http.auth_status(since=seen)
            if auth is not None:
                raise McpAuthError(_auth_message(shown, auth, connection.has_token)) from None
            raise McpError(
                f"The MCP server {shown} failed to list its tools: {connection.quote(exc.message)}"
            ) from None
        except ValidationError:
            raise McpError(f"The MCP server {shown} sent a malformed tool list") from None
        except Exception as exc:
            connection.failed = True
            raise McpError(
                f"The MCP server {shown} failed to list its tools: {connection.describe(exc)}"
            ) from None
        return tools

    async def _call(
        self, connection: _Connection, reused: bool, name: str, arguments: dict[str, Any]
    ) -> McpCallResult:
        client = connection.client()
        shown = redact_url(connection.url)
        seen = connection.http.failures
        try:
            with anyio.fail_after(self.call_timeout_s):
                result = await client.call_tool(name, arguments)
        except TimeoutError:
            return _error_result(
                f"The MCP server {shown} did not finish the tool call {name!r} "
                f"within {self.call_timeout_s:g}s"
            )
        except MCPError as exc:
            connection.note_failure(exc, seen)
            auth = connection.http.auth_status(since=seen)
            if auth is not None:
                return _error_result(_auth_message(shown, auth, connection.has_token))
            if 404 in connection.http.since(seen) and reused:
                raise _SessionLost(
                    _error_result(
                        f"The MCP server {shown} no longer knows this client's session (HTTP 404)"
                    )
                ) from None
            if connection.failed:
                return _error_result(
                    f"The connection to the MCP server {shown} failed during the tool call "
                    f"{name!r}: {connection.quote(exc.message)}"
                )
            if exc.code == PARSE_ERROR:
                return _error_result(
                    f"The MCP server {shown} sent an unreadable answer to the tool call {name!r}"
                )
            return _error_result(
                f"The MCP server {shown} answered the tool call {name!r} with an error: "
                f"{connection.quote(exc.message)} (code {exc.code})"
            )
        except ValidationError:
            return _error_result(
                f"The MCP server {shown} sent a malformed result for the tool call {name!r}"
            )
        except Exception as exc:
            connection.failed = True
            return _error_result(
                f"The tool call {name!r} to the MCP server {shown} failed: "
                f"{connection.describe(exc)}"
            )
        return McpCallResult(content=render_content(result), is_error=result.is_error)


class _SessionLost(Exception):
    """A pooled session the server no longer knows: the call was refused, not run."""

    def __init__(self, result: McpCallResult) -> None:
        super().__init__(result.content[0]["text"])
        self.result = result


class _HttpStatuses:
    """The error statuses (4xx/5xx) the server answered on one connection, numbered."""

    def __init__(self) -> None:
        self.failures = 0
        self.recent: list[tuple[int, int]] = []  # (number, status), the last few

    async def record(self, response: httpx2.Response) -> None:
        if response.status_code >= 400:
            self.failures += 1
            self.recent.append((self.failures, response.status_code))
            del self.recent[:-16]

    def since(self, seen: int) -> list[int]:
        return [status for number, status in self.recent if number > seen]

    def auth_status(self, since: int = 0) -> int | None:
        return next((status for status in self.since(since) if status in (401, 403)), None)

    def last(self) -> int | None:
        return self.recent[-1][1] if self.recent else None


class _Connection:
    """One MCP session, entered and left by its own owner task."""

    def __init__(
        self,
        url: str,
        token: str | None,
        *,
        connect_timeout_s: float,
        read_timeout_s: float,
        on_open: Callable[[], None],
    ) -> None:
        self.url = url
        self.key = (url, _token_key(token))
        self._token = token
        self.has_token = bool(token)
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.http = _HttpStatuses()
        self.tools: list[McpTool] | None = None
        self.in_flight = 0
        self.last_used = time.monotonic()
        self.transport: TransportKind | None = None
        self.failed = False  # the transport broke: drop and reconnect
        self.opened = False
        self._on_open = on_open
        self._client: Client | None = None
        self._ready = anyio.Event()
        self._stop = anyio.Event()
        self._finished = anyio.Event()
        self._scope: anyio.CancelScope | None = None
        self._failure: BaseException | None = None
        self._timed_out = False
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<MCP connection to {redact_url(self.url)} over {self.transport}>"

    def start(self) -> None:
        self._task = _spawn(self._own())  # held: the loop keeps only weak references

    async def wait_ready(self) -> None:
        """Wait for the session; raise `McpError` if it could not be opened."""
        with anyio.move_on_after(self.connect_timeout_s + _CLOSE_GRACE_S):
            await self._ready.wait()
        if not self._ready.is_set():
            self._timed_out = True  # the owner overran its own deadline (a shielded wait)
        if self._client is None or self._finished.is_set():
            raise self._connect_error()

    def client(self) -> Client:
        if self._client is None:
            raise McpError(f"The connection to the MCP server {redact_url(self.url)} is closed")
        return self._client

    def usable(self, idle_timeout_s: float) -> bool:
        """Whether a new request may use this connection (else it is dropped)."""
        if self.failed or self._finished.is_set():
            self.failed = True
            return False
        if self._client is not None and _session_closed(self._client):
            self.failed = True
            return False
        if not self._ready.is_set():
            return True  # still connecting; its waiters will learn the outcome
        return self.in_flight > 0 or time.monotonic() - self.last_used < idle_timeout_s

    def note_failure(self, exc: MCPError, statuses_before: int) -> None:
        """Mark the connection broken if the error came from the transport rather than the
        server's JSON-RPC answer: the connection closed, the session was lost (404), the
        token was refused, or the server failed (5xx). A 400 carrying a JSON-RPC error is
        an answer."""
        statuses = self.http.since(statuses_before)
        if exc.code == CONNECTION_CLOSED or any(
            s in (401, 403, 404, 405) or s >= 500 for s in statuses
        ):
            self.failed = True

    async def close(self) -> None:
        """End the session: politely, then by cancellation if that takes too long."""
        self._stop.set()
        if self._client is None and self._scope is not None:
            self._scope.cancel()  # still connecting: nobody is waiting for it any more
        with anyio.move_on_after(_CLOSE_GRACE_S, shield=True):
            await self._finished.wait()
        if not self._finished.is_set() and self._scope is not None:
            self._scope.cancel()
            with anyio.move_on_after(_CLOSE_GRACE_S, shield=True):
                await self._finished.wait()

    async def _own(self) -> None:
        """The owner task: connect (falling back to SSE), serve until told to stop."""
        try:
            if self._stop.is_set():
                return
            with anyio.CancelScope(deadline=anyio.current_time() + self.connect_timeout_s) as scope:
                self._scope = scope
                if _wants_sse(self.url):
                    await self._serve("sse")
                else:
                    try:
                        await self._serve("streamable-http")
                    except Exception:
                        # An SSE-only server answers the streamable POST with 404 or 405.
                        if self._client is not None or not {404, 405} & set(self.http.since(0)):
                            raise
                        self.http = _HttpStatuses()
                        await self._serve("sse")
            if scope.cancelled_caught and not self._ready.is_set() and not self._stop.is_set():
                self._timed_out = True
        except Exception as exc:
            self._failure = exc
        finally:
            self._client = None
            self.failed = True
            self._finished.set()
            self._ready.set()

    async def _serve(self, kind: TransportKind) -> None:
        self.transport = kind
        async with AsyncExitStack() as stack:
            transport = await self._transport(kind, stack)
            client = Client(
                transport,
                mode="auto",
                cache=None,
                client_info=_CLIENT_INFO,
                message_handler=self._on_message,
            )
            await stack.enter_async_context(client)
            self._client = client
            assert self._scope is not None
            self._scope.deadline = math.inf
            self.opened = True
            self._on_open()
            logger.info(
                "MCP connection to %s open over %s (protocol %s)",
                redact_url(self.url),
                kind,
                client.protocol_version,
            )
            self._ready.set()
            await self._stop.wait()

    async def _transport(self, kind: TransportKind, stack: AsyncExitStack) -> Transport:
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        hooks = {"response": [self.http.record]}
        if kind == "sse":

            def client_factory(
                headers: dict[str, str] | None = None,
                timeout: httpx2.Timeout | None = None,
                auth: httpx2.Auth | None = None,
            ) -> httpx2.AsyncClient:
                return httpx2.AsyncClient(
                    headers=headers, timeout=timeout, auth=auth, event_hooks=hooks
                )

            return sse_client(
                self.url,
                headers=headers,
                timeout=self.connect_timeout_s,
                sse_read_timeout=self.read_timeout_s,
                httpx_client_factory=client_factory,
            )
        http_client = httpx2.AsyncClient(
            headers=headers,
            timeout=httpx2.Timeout(self.connect_timeout_s, read=self.read_timeout_s),
            event_hooks=hooks,
        )
        await stack.enter_async_context(http_client)
        return streamable_http_client(self.url, http_client=http_client)

    async def _on_message(self, message: IncomingMessage) -> None:
        # The transport reports a broken stream as an exception item: reconnect next time.
        if isinstance(message, Exception):
            self.failed = True
        elif isinstance(message, ToolListChangedNotification):
            self.tools = None

    def _connect_error(self) -> McpError:
        shown = redact_url(self.url)
        auth = self.http.auth_status()
        if auth is not None:
            return McpAuthError(_auth_message(shown, auth, self.has_token))
        if self._timed_out:
            return McpError(
                f"Timed out connecting to the MCP server {shown} after {self.connect_timeout_s:g}s"
            )
        if self._failure is None:
            return McpError(f"The connection to the MCP server {shown} was closed")
        leaf = _leaf(self._failure)
        if isinstance(leaf, httpx2.TimeoutException):
            return McpError(
                f"Timed out connecting to the MCP server {shown} after {self.connect_timeout_s:g}s"
            )
        if isinstance(leaf, httpx2.ConnectError):
            return McpError(f"Could not connect to the MCP server {shown}: {self.describe(leaf)}")
        last = self.http.last()
        status = f" (HTTP {last})" if last is not None else ""
        if isinstance(leaf, MCPError):
            return McpError(
                f"The MCP server {shown} refused the MCP handshake{status}: "
                f"{self.quote(leaf.message)}"
            )
        return McpError(f"Could not use the MCP server {shown}{status}: {self.describe(leaf)}")

    def describe(self, exc: BaseException) -> str:
        """`Type: message` of an exception, with the token and the URL's query taken out."""
        text = self.quote(str(exc))
        return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

    def quote(self, text: str) -> str:
        """Text from the server or the SDK, redacted and cut to a sensible length."""
        text = self.redact(text)
        return text if len(text) <= _QUOTED_CHARS else text[:_QUOTED_CHARS] + "…"

    def redact(self, text: str) -> str:
        if self.url in text:
            text = text.replace(self.url, redact_url(self.url))
        # The HTTP client quotes the URL as it sent it (host lowercased, characters escaped),
        # so any URL's query and fragment go, whatever its spelling.
        text = _URL_QUERY.sub(r"\1", text)
        if self._token and self._token in text:
            text = text.replace(self._token, "[token]")
        return text


def render_content(result: CallToolResult) -> list[dict[str, Any]]:
    """MCP result content as Anthropic text blocks; what is not text is described in words."""
    blocks = [{"type": "text", "text": _render_block(block)} for block in result.content]
    if not blocks and result.structured_content is not None:
        blocks.append({"type": "text", "text": json.dumps(result.structured_content)})
    return blocks


def _render_block(block: ContentBlock) -> str:
    if isinstance(block, TextContent):
        return block.text
    if isinstance(block, ImageContent):
        return f"[image: {block.mime_type}, {_decoded_size(block.data)} bytes]"
    if isinstance(block, AudioContent):
        return f"[audio: {block.mime_type}, {_decoded_size(block.data)} bytes]"
    if isinstance(block, ResourceLink):
        title = f" ({block.name})" if block.name else ""
        return f"[resource link: {block.uri}{title}]"
    if isinstance(block, EmbeddedResource):
        resource = block.resource
        if isinstance(resource, TextResourceContents):
            return resource.text
        mime = resource.mime_type or "binary"
        return f"[resource {resource.uri}: {mime}, {_decoded_size(resource.blob)} bytes]"
    return f"[{getattr(block, 'type', 'unknown')} content]"


def _decoded_size(base64_data: str) -> int:
    return len(base64_data) * 3 // 4 - base64_data[-2:].count("=")


def read_only_hint(tool: Tool) -> bool | None:
    """A server's own word on its tool, as listed: False when it says `destructiveHint`,
    else its `readOnlyHint`; None when it said neither."""
    annotations = tool.annotations
    if annotations is None:
        return None
    return False if annotations.destructive_hint else annotations.read_only_hint


def _tool(tool: Tool) -> McpTool:
    return McpTool(
        name=tool.name,
        description=tool.description or "",
        input_schema=dict(tool.input_schema),
        read_only_hint=read_only_hint(tool),
    )


def _error_result(text: str) -> McpCallResult:
    return McpCallResult(content=[{"type": "text", "text": text}], is_error=True)


def _auth_message(shown: str, status: int, has_token: bool) -> str:
    if has_token:
        return f"The MCP server {shown} refused the authorization token (HTTP {status})"
    return f"The MCP server {shown} requires an authorization token (HTTP {status})"


def _token_key(token: str | None) -> str:
    return hashlib.sha256(token.encode()).hexdigest() if token else ""


def _wants_sse(url: str) -> bool:
    return urlsplit(url).path.rstrip("/").endswith("/sse")


def _leaf(exc: BaseException) -> BaseException:
    """The first real error inside (nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        errors = [e for e in exc.exceptions if not isinstance(e, asyncio.CancelledError)]
        exc = (errors or list(exc.exceptions))[0]
    return exc


def _session_closed(client: Client) -> bool:
    """Whether the session's dispatcher has seen its stream end (an SSE stream the server
    closed): a request would fail at once. The SDK has no public flag for it."""
    dispatcher = getattr(client.session, "_dispatcher", None)
    return bool(getattr(dispatcher, "_closed", False))


def _spawn(coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    # A fresh context: a connection outlives the request that opened it, and is shared.
    return asyncio.get_running_loop().create_task(coroutine, context=contextvars.Context())


__all__ = [
    "McpAuthError",
    "McpCallResult",
    "McpError",
    "McpPool",
    "McpTool",
    "render_content",
]
