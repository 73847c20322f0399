"""`InProcessModel`: tercet's own server app, called in this process with no socket.

The official SDK talks to the app through an ASGI transport, so the agent speaks exactly the
wire format it speaks to a remote server: the same validation, signatures, prompt cache and
stream events. The transport streams the response as the app produces it (httpx's own
ASGITransport buffers the whole body), so text deltas reach the caller as they are generated.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

import httpx2

from tercet.agent.model import AnthropicModel, ModelRequest, ModelStreamItem

if TYPE_CHECKING:
    from fastapi import FastAPI

    from tercet.engine.base import Engine
    from tercet.server.config import ServerConfig

log = logging.getLogger("tercet.agent")
BASE_URL = "http://tercet.in-process"


class InProcessModel(AnthropicModel):
    """The Messages API of tercet's app on `engines`, in-process. The app owns the engines:
    `aclose` shuts it down and closes them. `config` defaults to an open server (no keys)
    with its data (signing secret, files) in tercet's data directory."""

    def __init__(
        self,
        engines: Engine | Sequence[Engine],
        *,
        config: ServerConfig | None = None,
        betas: Sequence[str] = (),
        extra_body: Mapping[str, Any] | None = None,
    ) -> None:
        from tercet.server.app import create_app
        from tercet.server.config import ServerConfig

        config = config or ServerConfig(api_keys=[])
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.app: FastAPI = create_app(
            config, engines if isinstance(engines, Sequence) else [engines]
        )
        http_client = httpx2.AsyncClient(
            transport=StreamingASGITransport(self.app), base_url=BASE_URL, timeout=None
        )
        super().__init__(
            base_url=BASE_URL,
            api_key=config.api_keys[0] if config.api_keys else "in-process",
            betas=betas,
            extra_body=extra_body,
            max_retries=0,  # nothing between here and the app can fail transiently
            http_client=http_client,
        )
        self._lifespan: AsyncExitStack | None = None

    async def stream(self, request: ModelRequest) -> AsyncGenerator[ModelStreamItem, None]:
        await self._start()
        async for item in super().stream(request):
            yield item

    async def context_window(self, model: str) -> int | None:
        await self._start()
        return await super().context_window(model)

    async def aclose(self) -> None:
        await super().aclose()
        if self._lifespan is not None:
            lifespan, self._lifespan = self._lifespan, None
            await lifespan.aclose()

    async def _start(self) -> None:
        """Run the app's startup, as a server would before its first request."""
        if self._lifespan is None:
            stack = AsyncExitStack()
            await stack.enter_async_context(self.app.router.lifespan_context(self.app))
            self._lifespan = stack


class StreamingASGITransport(httpx2.AsyncBaseTransport):
    """Sends requests to an ASGI app in this process and streams its response body back as
    the app sends it. Closing the response early tells the app the client went away."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        body = b"".join([chunk async for chunk in request.stream])  # type: ignore[union-attr]
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": request.method,
            "headers": [(k.lower(), v) for k, v in request.headers.raw],
            "scheme": request.url.scheme,
            "path": request.url.path,
            "raw_path": request.url.raw_path.split(b"?")[0],
            "query_string": request.url.query,
            "server": (request.url.host, request.url.port or 80),
            "client": ("127.0.0.1", 0),
            "root_path": "",
        }
        started: asyncio.Future[tuple[int, list[tuple[bytes, bytes]]]] = (
            asyncio.get_running_loop().create_future()
        )
        chunks: asyncio.Queue[bytes | None] = asyncio.Queue()
        disconnected = asyncio.Event()
        request_sent = False

        async def receive() -> dict[str, Any]:
            nonlocal request_sent
            if not request_sent:
                request_sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await disconnected.wait()
            return {"type": "http.disconnect"}

        async def send(message: Mapping[str, Any]) -> None:
            if message["type"] == "http.response.start" and not started.done():
                started.set_result((message["status"], list(message.get("headers", []))))
            elif message["type"] == "http.response.body":
                if message.get("body"):
                    chunks.put_nowait(bytes(message["body"]))
                if not message.get("more_body", False):
                    chunks.put_nowait(None)

        async def run_app() -> None:
            try:
                await self.app(scope, receive, send)
            except Exception as exc:  # the app's error handlers have answered what they could
                log.exception("in-process request failed")
                if not started.done():
                    started.set_exception(exc)
            finally:
                if not started.done():
                    started.set_exception(httpx2.RemoteProtocolError("the app sent no response"))
                chunks.put_nowait(None)

        task = asyncio.create_task(run_app())
        try:
            status, headers = await started
        except BaseException:
            disconnected.set()
            task.cancel()
            raise
        return httpx2.Response(
            status, headers=headers, stream=_ResponseBody(chunks, disconnected, task)
        )


class _ResponseBody(httpx2.AsyncByteStream):
    def __init__(
        self,
        chunks: asyncio.Queue[bytes | None],
        disconnected: asyncio.Event,
        task: asyncio.Task[None],
    ) -> None:
        self._chunks = chunks
        self._disconnected = disconnected
        self._task = task

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while (chunk := await self._chunks.get()) is not None:
            yield chunk

    async def aclose(self) -> None:
        self._disconnected.set()  # the app notices, and stops generating
        await asyncio.wait({self._task}, timeout=5)
        if not self._task.done():
            self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
