"""Every failure answers the Anthropic error envelope; nothing answers with a traceback."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from tercet.server.json_body import JSONBody
from tercet.wire.errors import (
    APIError,
    ErrorResponse,
    InternalError,
    InvalidRequestError,
    MethodNotAllowedError,
    NotFoundError,
    RequestTooLargeError,
)

log = logging.getLogger("tercet.server")


def error_response(error: APIError, request_id: str | None) -> JSONResponse:
    body = ErrorResponse(error=error.detail(), request_id=request_id)
    headers = {"x-should-retry": "true"} if error.status_code >= 500 else None
    return JSONBody(body.model_dump(), status_code=error.status_code, headers=headers)


def describe_validation_error(exc: ValidationError | RequestValidationError) -> str:
    """The most specific problem, as `path.to.field: message` (Anthropic's style)."""
    # A union reports one error per member; the deepest one is where the input went wrong.
    first = max(exc.errors(), key=lambda e: len(e["loc"]))
    path = ".".join(str(part) for part in first["loc"] if _is_field(part))
    message = str(first["msg"])
    return f"{path}: {message}" if path else message


def _is_field(part: object) -> bool:
    # Union members appear in pydantic locations as type descriptions such as
    # `list[...]` or `function-after[...]`; clients want the field path only.
    return isinstance(part, int) or (
        isinstance(part, str) and part not in _TYPE_NAMES and not any(c in part for c in "[](),- ")
    )


_TYPE_NAMES = frozenset({"body", "str", "int", "float", "bool", "list", "dict", "none"})


def _request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def install_error_handlers(app: FastAPI) -> None:
    async def on_api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, APIError)
        return error_response(exc, _request_id(request))

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        error: APIError
        if exc.status_code == 404:
            error = NotFoundError(f"Not found: {request.method} {request.url.path}")
        elif exc.status_code == 413:
            error = RequestTooLargeError(str(exc.detail))
        elif exc.status_code == 405:
            error = MethodNotAllowedError(
                f"Method not allowed: {request.method} {request.url.path}"
            )
        else:
            error = InvalidRequestError(str(exc.detail))
        return error_response(error, _request_id(request))

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError | ValidationError)
        return error_response(
            InvalidRequestError(describe_validation_error(exc)), _request_id(request)
        )

    async def on_disconnect(request: Request, exc: Exception) -> Response:
        # The client left before it sent its whole body (`request.stream()` raises this):
        # nobody reads an answer, and it is no server error to log with a traceback.
        log.info("client went away during %s %s", request.method, request.url.path)
        return Response(status_code=499)

    async def on_bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        request_id = _request_id(request)
        response = error_response(InternalError("Internal server error"), request_id)
        # This handler runs outside every middleware, RequestIdMiddleware included.
        if request_id is not None:
            response.headers["request-id"] = request_id
        return response

    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(ValidationError, on_validation_error)
    app.add_exception_handler(ClientDisconnect, on_disconnect)
    app.add_exception_handler(Exception, on_bug)
