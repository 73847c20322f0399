"""The HTTP application: routes of the Messages API over the generation loop.

Paths match with or without `?beta=true` (the SDK's beta namespace and Claude Code add it).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, replace
from time import perf_counter
from typing import Any, TypeVar

import anyio
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel
from pydantic_core import from_json
from starlette.types import Receive, Scope, Send

import tercet
from tercet.audit import AuditConfig, AuditLog
from tercet.engine.base import Engine
from tercet.files.store import LocalFileStore
from tercet.mcp import McpPool, UrlPolicy
from tercet.sandbox.containers import ContainerManager
from tercet.sandbox.runtime import default_runtime
from tercet.server.admin import admin_router, egress_actions
from tercet.server.admission import AdmissionQueue
from tercet.server.audit import ServerAudit
from tercet.server.classifiers import ServerClassifiers
from tercet.server.code_execution import CodeExecutor
from tercet.server.config import ServerConfig
from tercet.server.conversation import build_conversation, latest_user_text
from tercet.server.conversation_end import (
    EndConversationOffer,
    EndedConversations,
    history_hashes,
)
from tercet.server.errors import install_error_handlers
from tercet.server.files import files_router, resolve_file_sources_async
from tercet.server.generation import Ending, GenerationPlan, complete, plan, stream_events
from tercet.server.guard import ServerGuard
from tercet.server.json_body import JSONBody
from tercet.server.keys import KeyStore
from tercet.server.mcp_connector import discover
from tercet.server.metrics import ServerMetrics
from tercet.server.models import ModelRegistry
from tercet.server.request_log import PrefillLog, RequestRecord, log_request
from tercet.server.signatures import ThinkingSigner
from tercet.server.sse import encode, encode_all, with_pings
from tercet.server.thinking import thinks
from tercet.wire.errors import (
    APIError,
    AuthenticationError,
    ErrorDetail,
    InvalidRequestError,
    RequestTooLargeError,
)
from tercet.wire.events import ErrorEvent
from tercet.wire.requests import CountTokensRequest, MessageCreateRequest
from tercet.wire.responses import Message, MessageTokensCount, ModelInfo, ModelList

log = logging.getLogger("tercet.server")
T = TypeVar("T")
Model = TypeVar("Model", bound=BaseModel)


def create_app(config: ServerConfig, engines: Sequence[Engine]) -> FastAPI:
    """The ASGI app serving `engines`. The app closes the engines when it shuts down.
    Raises `tercet.guard.PolicyError` when `config.guard` names a policy that cannot be used."""
    policy = config.guard_policy()  # a policy that does not load fails here, at start
    audit = _audit(config)
    guard = ServerGuard(policy) if policy is not None else None
    registry = ModelRegistry(engines, config.routes)
    signer = ThinkingSigner.from_data_dir(config.data_dir)
    lines = {
        model_id: AdmissionQueue(max_active=engine.spec.parallel, max_waiting=config.max_queue)
        for model_id, engine in registry.engines.items()
    }
    classifiers = _classifiers(config, registry, signer)
    keys = KeyStore.in_data_dir(config.data_dir, config.api_keys)
    if classifiers is not None:  # a key's mode set through the admin API comes first
        classifiers.key_modes = keys.classifier_mode_for
    offer, ended = None, None
    if config.end_conversation:  # the offer's data and the record of ended ones, read at start
        offer = EndConversationOffer.load()
        ended = EndedConversations(config.data_dir / "conversations" / "ended.jsonl")

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        await mcp_pool.aclose()
        if classifiers is not None:
            await classifiers.aclose()
        containers.close()
        if audit is not None:
            audit.close()
        for engine in registry.engines.values():
            await engine.aclose()
        files.close()

    app = FastAPI(title="tercet", version=tercet.__version__, lifespan=lifespan)
    app.state.registry = registry
    app.state.lines = lines
    app.state.classifiers = classifiers
    metrics = ServerMetrics(registry.engines, lines)
    app.state.metrics = metrics
    install_error_handlers(app)
    app.add_middleware(
        RequestIdMiddleware,
        on_end=metrics.observe if audit is None else _both(metrics.observe, audit.request_ended),
    )

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def root() -> dict[str, str]:
        return {"service": "tercet", "version": tercet.__version__}

    authenticate = _authenticator(keys)
    api = APIRouter(prefix="/v1", dependencies=[Depends(authenticate)])
    files = LocalFileStore(config.data_dir / "files")
    containers = ContainerManager(
        config.data_dir / "sandbox",
        config.container_limits,
        config.execution_limits,
        runtime=default_runtime(),
        on_egress_event=None if audit is None else _egress_recorder(audit),
    )
    code_execution = CodeExecutor(containers, files, config.file_quota_bytes)
    mcp_pool = McpPool(
        policy=UrlPolicy(
            allowed=tuple(config.mcp_allowed_urls), allow_loopback=config.mcp_allow_loopback
        ),
        idle_timeout_s=config.mcp_idle_timeout_s,
        connect_timeout_s=config.mcp_connect_timeout_s,
        call_timeout_s=config.mcp_call_timeout_s,
        max_connections=config.mcp_max_connections,
    )

    @api.post("/messages", response_model=None)
    async def create_message(request: Request) -> Response:
        record: RequestRecord = request.state.record
        body = await _read_body(request, MessageCreateRequest, config.max_body_bytes)
        record.model = body.model
        owner = request.state.owner
        if audit is not None:  # the turn it judges by and the conversation it belongs to
            record.prompt_text = latest_user_text(body)
            chain = history_hashes(body.messages, owner)
            record.conversation = chain[-1][:16] if chain else None
        if ended is not None:  # a conversation the model ended stays ended (403)
            await anyio.to_thread.run_sync(ended.check, body, owner)
        await resolve_file_sources_async(body, files, owner)
        ending = None
        if offer is not None and ended is not None:
            ending = Ending(offer, ended, owner, record.request_id)
        job = await plan(
            body,
            registry,
            lines,
            signer,
            _betas(request),
            code_execution=code_execution,
            mcp_pool=mcp_pool,
            owner=request.state.owner,
            max_tool_iterations=config.max_tool_iterations,
            guard=guard,
            classifiers=classifiers,
            ending=ending,
            request_id=record.request_id,
        )
        record.planned = perf_counter()
        record.served_model = job.engine.spec.id
        record.prompt, record.generation = job.prompt, job.stats
        record.prefill = PrefillLog(record.request_id, config.prefill_progress_interval_s)
        job.params = replace(job.params, prefill_progress=record.prefill)
        if body.stream:
            return EventStreamResponse(job, config.ping_interval, record)
        try:
            message = await _until_disconnected(request.receive, complete(job), record)
        finally:
            job.ticket.leave()
        if message is None:  # the client went away; nobody reads this
            return Response(status_code=499)
        return JSONBody(message.model_dump())

    @api.post("/messages/count_tokens")
    async def count_tokens(request: Request) -> MessageTokensCount:
        body = await _read_body(request, CountTokensRequest, config.max_body_bytes)
        await resolve_file_sources_async(body, files, request.state.owner)
        engine = registry.resolve(body.model)
        betas = _betas(request)
        thinking = thinks(body, betas, adaptive_model=engine.spec.adaptive_thinking)
        if guard is not None:  # the prompt as `plan` builds it, the guard's instruction included
            body = guard.instructed(body, request.state.owner)
        offered = offer if offer is not None and offer.offered(body) else None
        if offered is not None:  # and the end_conversation tool, where plan offers it
            body = offered.instructed(body)
        build_conversation(body)  # the message rules, before any MCP server is asked
        toolbox = await discover(body, betas, mcp_pool)
        extra_tools = [*(toolbox.tools if toolbox else ()), *([offered.tool] if offered else [])]
        conversation = build_conversation(body, extra_tools=extra_tools)
        if toolbox is not None:  # earlier calls under the names the model reads, as in plan
            conversation = toolbox.renamed_history(conversation)
        # Without breakpoints: counting reads nothing from the cache and refreshes nothing.
        conversation = replace(conversation, thinking=thinking, breakpoints=())
        prompt = await engine.prepare(conversation)
        return MessageTokensCount(input_tokens=prompt.total_tokens)

    @api.get("/models")
    async def list_models(
        limit: int = Query(default=20, ge=1, le=1000),
        before_id: str | None = None,
        after_id: str | None = None,
    ) -> ModelList:
        return _page(registry.listed(), limit, before_id, after_id)

    @api.get("/models/{model_id}")
    async def get_model(model_id: str) -> ModelInfo:
        return registry.info(model_id)

    app.include_router(api)
    app.include_router(files_router(config, files, authenticate))

    if config.metrics != "off":
        scrapers = [Depends(authenticate)] if config.metrics == "key" else []

        @app.get("/metrics", dependencies=scrapers, include_in_schema=False)
        async def prometheus_metrics() -> Response:
            """Prometheus' text format (tercet's own; not part of Anthropic's API)."""
            return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    book = config.admin.book(
        config.data_dir, on_event=None if audit is None else _operator_recorder(audit)
    )
    actions = {**egress_actions(containers), **(classifiers.actions() if classifiers else {})}
    app.include_router(admin_router(config.admin, keys, book, actions))

    @app.get("/stats", dependencies=[Depends(authenticate)])
    async def stats() -> dict[str, Any]:
        """Operator counters per served model (tercet's own; not part of Anthropic's API)."""
        return {
            model_id: {"prompt_cache": asdict(s) if (s := engine.cache_stats()) else None}
            for model_id, engine in registry.engines.items()
        }

    return app


class RequestIdMiddleware:
    """Gives every request a `request-id` (echoed in error bodies), as Anthropic's API does,
    and a `RequestRecord`; when the request ends, hands the record to `on_end` (the metrics)
    and writes a Messages request's log line.

    The end is just before the last byte goes out, so a client that has its answer finds it
    counted; or when the app returns or fails without one (a client that left; a bug).
    """

    def __init__(
        self,
        app: Callable[[Scope, Receive, Send], Awaitable[None]],
        on_end: Callable[[RequestRecord], None],
    ) -> None:
        self.app = app
        self.on_end = on_end

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = "req_" + secrets.token_hex(12)
        record = RequestRecord(request_id, scope["method"])
        state = scope.setdefault("state", {})
        state["request_id"], state["record"] = request_id, record

        def end() -> None:
            if record.ended is not None:
                return
            record.ended = perf_counter()
            record.route = getattr(scope.get("route"), "path", None)
            record.owner = state.get("owner")  # set by the key check, even one that failed
            record.operator = state.get("operator")  # an admin request's operator
            try:
                self.on_end(record)
                if record.route == MESSAGES_ROUTE:
                    log_request(record)
            except Exception:  # accounting must never cost a client its answer
                log.exception("recording the end of %s failed", request_id)

        started_status: int | None = None  # the status the response began with

        async def send_with_id(message: Any) -> None:
            nonlocal started_status
            if message["type"] == "http.response.start":
                message.setdefault("headers", []).append((b"request-id", request_id.encode()))
                # A stream that fails or is left later says so over this (its error's status, 499).
                record.status = started_status = message["status"]
            elif message["type"] == "http.response.body":
                record.bytes_out += len(message.get("body", b""))
                if record.status is not None and record.status >= 400:
                    record.error_type = record.error_type or _error_type(message.get("body"))
                # A stream that fails sends its error event as its last frame: record the end
                # before the client can read it (and look for the log line), not after the
                # closing empty chunk.
                failed_mid_stream = record.status != started_status
                if failed_mid_stream or not message.get("more_body", False):
                    end()
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except BaseException:
            if record.status is None:  # the outermost handler answers with a 500
                record.status, record.error_type = 500, "api_error"
            raise
        finally:
            end()


MESSAGES_ROUTE = "/v1/messages"


def _error_type(body: object) -> str | None:
    """The `error.type` of an error envelope."""
    try:
        return str(from_json(body)["error"]["type"]) if isinstance(body, bytes) else None
    except (ValueError, KeyError, TypeError):
        return None


class EventStreamResponse(StreamingResponse):
    """An SSE Messages stream that stops generating as soon as the client disconnects."""

    def __init__(self, job: GenerationPlan, ping_interval: float, record: RequestRecord) -> None:
        super().__init__(
            self._frames(job, ping_interval, record),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache"},
        )
        self._job = job
        self._record = record

    @staticmethod
    async def _frames(
        job: GenerationPlan, ping_interval: float, record: RequestRecord
    ) -> AsyncIterator[bytes]:
        try:
            async for events in with_pings(stream_events(job), ping_interval):
                yield encode_all(events)
        except APIError as exc:
            record.status, record.error_type = exc.status_code, exc.error_type
            yield encode(ErrorEvent(error=exc.detail()))
        except Exception:
            log.exception("generation failed mid-stream")
            record.status, record.error_type = 500, "api_error"
            yield encode(
                ErrorEvent(error=ErrorDetail(type="api_error", message="Internal server error"))
            )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await _until_disconnected(receive, self.stream_response(send), self._record)
        finally:
            self._job.ticket.leave()


async def _until_disconnected(
    receive: Receive, work: Awaitable[T], record: RequestRecord
) -> T | None:
    """Run `work`, cancelling it if the client disconnects first (then the result is None,
    and the record says 499)."""
    result: list[T] = []
    try:
        async with anyio.create_task_group() as group:

            async def run() -> None:
                result.append(await work)
                group.cancel_scope.cancel()

            group.start_soon(run)
            while (await receive())["type"] != "http.disconnect":
                pass
            if not result:
                record.status = 499
            group.cancel_scope.cancel()
    except BaseExceptionGroup as group_error:
        # The task group wraps what `work` raised; callers handle the error itself (a 4xx).
        if len(group_error.exceptions) == 1:
            raise group_error.exceptions[0] from None
        raise
    return result[0] if result else None


def _classifiers(
    config: ServerConfig, registry: ModelRegistry, signer: ThinkingSigner
) -> ServerClassifiers | None:
    """The safety classifiers `config.classifiers` describes (None when off). A judge on one of
    this server's models runs in process, in lines of its own: a check never waits behind the
    request it judges (which holds its model's place meanwhile)."""
    settings = config.classifier_settings()
    if settings is None:
        return None
    judge_lines = {
        model_id: AdmissionQueue(max_active=engine.spec.parallel, max_waiting=config.max_queue)
        for model_id, engine in registry.engines.items()
    }

    async def create(request: MessageCreateRequest) -> Message:
        job = await plan(request, registry, judge_lines, signer)
        try:
            return await complete(job)
        finally:  # a check cut off by its time limit before its stream began leaves the line
            job.ticket.leave()

    def served(name: str) -> tuple[str, str]:
        engine = registry.default if name == "self" else registry.resolve(name)  # or 404
        return (engine.spec.id if name == "self" else name), engine.spec.id

    return ServerClassifiers.build(settings, served, create)


def _betas(request: Request) -> frozenset[str]:
    """`anthropic-beta` values: comma-separated, and the header may repeat."""
    headers = request.headers.getlist("anthropic-beta")
    return frozenset(b.strip() for header in headers for b in header.split(",") if b.strip())


def _authenticator(keys: KeyStore) -> Callable[[Request], None]:
    """API keys: the configured ones and those the admin API made (not revoked). A server
    that never had a key is open."""

    def authenticate(request: Request) -> None:
        presented = request.headers.get("x-api-key")
        authorization = request.headers.get("authorization", "")
        if presented is None and authorization.lower().startswith("bearer "):
            presented = authorization[7:].strip()
        # What a request may see of stored files (its workspace): one per key. An open
        # server still keeps the keys clients present apart, as namespaces.
        request.state.owner = owner_of(presented)
        if keys.open:
            return
        if presented is None:
            raise AuthenticationError("x-api-key header is required")
        if keys.authenticates(presented) is None:
            raise AuthenticationError("invalid x-api-key")

    return authenticate


def _audit(config: ServerConfig) -> ServerAudit | None:
    if not config.audit:
        return None
    settings = AuditConfig(
        directory=config.data_dir / "audit",
        log_content=config.audit_content,
        retention_days=config.audit_retention_days,
    )
    return ServerAudit(AuditLog(settings))


def _both(
    first: Callable[[RequestRecord], None], second: Callable[[RequestRecord], None]
) -> Callable[[RequestRecord], None]:
    def both(record: RequestRecord) -> None:
        first(record)
        second(record)

    return both


def _operator_recorder(audit: ServerAudit) -> Callable[[dict[str, Any]], None]:
    def record(event: dict[str, Any]) -> None:
        fields = dict(event)
        audit.event("operator", fields.pop("actor", None), fields)

    return record


def _egress_recorder(audit: ServerAudit) -> Callable[[dict[str, object]], None]:
    def record(event: dict[str, object]) -> None:
        audit.event("egress", "server", dict(event))

    return record


def owner_of(api_key: str | None) -> str:
    """The workspace of an API key: a hash, so keys are never stored."""
    if api_key is None:
        return "anonymous"
    return hashlib.sha256(api_key.encode()).hexdigest()[:32]


async def _read_body(request: Request, model: type[Model], limit: int) -> Model:
    """Read at most `limit` bytes of JSON and validate it (413 beyond, 400 on bad JSON)."""
    declared = request.headers.get("content-length", "")
    too_large = RequestTooLargeError(f"Request exceeds the maximum allowed size of {limit} bytes")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    record = getattr(request.state, "record", None)
    if record is not None:
        record.bytes_in = len(body)
    try:
        # Strict, as Anthropic's parser is: a lone surrogate (which no later `.encode()`
        # survives), NaN, or nesting deeper than 200 levels (where `json` recurses past the
        # interpreter's limit) is a 400 here rather than a 500 further in.
        data = from_json(body, allow_inf_nan=False)
    except ValueError as exc:
        raise InvalidRequestError(f"The request body is not valid JSON: {exc}") from exc
    return model.model_validate(data)


def _page(
    models: list[ModelInfo], limit: int, before_id: str | None, after_id: str | None
) -> ModelList:
    ids = [m.id for m in models]
    start, end = 0, len(models)
    if after_id is not None:
        start = ids.index(after_id) + 1 if after_id in ids else len(models)
    if before_id is not None:
        end = ids.index(before_id) if before_id in ids else 0
        start = max(start, end - limit)
    page = models[start:end][:limit]
    more = (start + len(page) < end) if before_id is None else start > 0
    return ModelList(
        data=page,
        first_id=page[0].id if page else None,
        last_id=page[-1].id if page else None,
        has_more=more,
    )
