"""Real MCP servers for tests: the SDK's MCPServer in a subprocess on a loopback port.

`running_mcp_server("streamable-http")` (or `"sse"`) starts one and yields its URL once it
accepts connections; with `token=...` every MCP request without `Authorization: Bearer <token>`
is answered 401. Its tools: `add`, `echo`, `secret_word` (returns `SECRET_WORD`), `sleep`,
`fail` (a tool error), `reject` (a JSON-RPC error) and `die` (the process exits mid-call).
Run as a script, this module is the server itself.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import httpx

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

SECRET_WORD = "quokka-7"
TOKEN_ENV = "TERCET_TEST_MCP_TOKEN"
HEALTH_PATH = "/healthz"
Transport = Literal["streamable-http", "sse"]


@dataclass(frozen=True)
class McpServerInfo:
    """A running test server: the URL to connect to, its token, and its process."""

    url: str
    token: str | None
    process: subprocess.Popen[bytes]

    @property
    def port(self) -> int:
        return int(self.url.split(":")[2].split("/")[0])


@contextmanager
def running_mcp_server(
    transport: Transport,
    token: str | None = None,
    *,
    port: int | None = None,
    json_response: bool = False,
    sse_path: str = "/sse",
    legacy: bool = False,
    startup_timeout_s: float = 20.0,
) -> Iterator[McpServerInfo]:
    """Start a test MCP server in a subprocess; stop it (if still alive) on exit.

    `port` reuses a port (to restart a server where a client expects it); by default the
    server binds a free one. `json_response` makes streamable HTTP answer with plain JSON
    rather than an event stream; `sse_path` moves the SSE endpoint; `legacy` makes streamable
    HTTP refuse `server/discover` as servers before the 2026 protocol do (the client then
    falls back to the `initialize` handshake and a session id). Streamable HTTP also
    answers calls of the tools `garbled` (not JSON) and `misshapen` (a result that is not
    a tool result) itself, as a broken server would.
    """
    env = dict(os.environ)
    env.pop(TOKEN_ENV, None)
    if token is not None:
        env[TOKEN_ENV] = token  # not on the command line, where `ps` would show it
    command = [sys.executable, __file__, "--transport", transport, "--port", str(port or 0)]
    command += ["--sse-path", sse_path]
    if legacy:
        command.append("--legacy")
    if json_response:
        command.append("--json-response")
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None
        line = process.stdout.readline().decode().strip()  # "PORT <n>", printed once bound
        if not line.startswith("PORT "):
            raise RuntimeError(f"test MCP server did not start (exit code {process.poll()})")
        bound = int(line.split()[1])
        base = f"http://127.0.0.1:{bound}"
        _wait_until_serving(base + HEALTH_PATH, process, startup_timeout_s)
        path = sse_path if transport == "sse" else "/mcp"
        yield McpServerInfo(url=base + path, token=token, process=process)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout is not None:
            process.stdout.close()


def _wait_until_serving(url: str, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"test MCP server exited with code {process.returncode}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"test MCP server not serving {url} after {timeout_s}s")
        time.sleep(0.05)


@contextmanager
def refused_port() -> Iterator[int]:
    """A loopback port where connecting is refused, for as long as the block runs: it is bound
    (so nothing else can take it meanwhile, as a port probed free and let go could be) but
    does not listen."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        yield int(holder.getsockname()[1])


# The server side: everything below runs in the subprocess.


def build_server() -> Any:
    """The MCPServer with the test tools."""
    from mcp.server.mcpserver import MCPServer

    server = MCPServer("tercet-test", log_level="WARNING")

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @server.tool()
    def echo(text: str) -> str:
        """Return the text unchanged."""
        return text

    @server.tool()
    def secret_word() -> str:
        """Return the secret word."""
        return SECRET_WORD

    @server.tool()
    async def sleep(seconds: float) -> str:
        """Sleep, then say so."""
        import anyio

        await anyio.sleep(seconds)
        return f"slept {seconds}s"

    @server.tool()
    def fail(message: str) -> str:
        """Fail with the given message (a tool error, which the model sees)."""
        from mcp.server.mcpserver.exceptions import ToolError

        raise ToolError(message)

    @server.tool()
    def reject(message: str) -> str:
        """Fail with the given message as a JSON-RPC error (a protocol error)."""
        from mcp.shared.exceptions import MCPError

        raise MCPError(code=-32010, message=message)

    @server.tool()
    def die() -> str:
        """Kill the server process in the middle of the call."""
        os._exit(1)

    @server.custom_route(HEALTH_PATH, methods=["GET"])
    async def health(request: Any) -> Any:
        from starlette.responses import PlainTextResponse

        return PlainTextResponse("ok")

    return server


class RequireBearer:
    """ASGI middleware: 401 for any HTTP request but the health check without the token."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] != HEALTH_PATH:
            headers = dict(scope["headers"])
            if headers.get(b"authorization") != self.expected:
                from starlette.responses import JSONResponse

                response = JSONResponse(
                    {"error": "invalid_token", "error_description": "missing or wrong token"},
                    status_code=401,
                    headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class Garble:
    """ASGI middleware: answer calls of `garbled` and `misshapen` with broken responses, and
    with `legacy`, refuse `server/discover` as an mcp 1.x server does."""

    def __init__(self, app: ASGIApp, legacy: bool) -> None:
        self.app = app
        self.legacy = legacy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        from starlette.responses import JSONResponse, Response

        try:
            request = json.loads(body)
            name = request["params"]["name"] if request.get("method") == "tools/call" else None
        except (ValueError, KeyError, TypeError):
            request, name = {}, None
        if self.legacy and request.get("method") == "server/discover":
            error = {"code": -32600, "message": "Bad Request: Missing session ID"}
            refusal = {"jsonrpc": "2.0", "id": "server-error", "error": error}
            await JSONResponse(refusal, status_code=400)(scope, receive, send)
            return
        if name in ("garbled", "misshapen"):
            if name == "garbled":
                response: Response = Response("{not json", media_type="application/json")
            else:
                result = {"content": [{"type": "text"}], "isError": "maybe"}
                response = JSONResponse({"jsonrpc": "2.0", "id": request["id"], "result": result})
            await response(scope, receive, send)
            return
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def serve(
    transport: Transport, port: int, json_response: bool, sse_path: str, legacy: bool
) -> None:
    import uvicorn

    server = build_server()
    if transport == "sse":
        app: Any = server.sse_app(sse_path=sse_path)
    else:
        app = Garble(server.streamable_http_app(json_response=json_response), legacy)
    token = os.environ.get(TOKEN_ENV)
    if token:
        app = RequireBearer(app, token)
    # IPPROTO_TCP, not the default 0: asyncio sets TCP_NODELAY only on sockets that say they
    # are TCP, and without it a response written in two parts waits for a delayed ACK (40 ms).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2)
    uvicorn.Server(config).run(sockets=[sock])


def main() -> None:
    parser = argparse.ArgumentParser(description="A test MCP server.")
    parser.add_argument("--transport", choices=["streamable-http", "sse"], required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--json-response", action="store_true")
    parser.add_argument("--sse-path", default="/sse")
    parser.add_argument("--legacy", action="store_true")
    args = parser.parse_args()
    serve(args.transport, args.port, args.json_response, args.sse_path, args.legacy)


if __name__ == "__main__":
    main()
