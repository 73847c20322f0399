"""The error envelope, and the exceptions that produce it.

Any layer raises an `APIError` subclass; the server turns it into
`{"type": "error", "error": {"type", "message"}, "request_id"}` with the matching HTTP status.
Messages keep Anthropic's wording where clients match on it (Claude Code does).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from tercet.wire.base import ResponseModel

ErrorType = Literal[
    "invalid_request_error",
    "authentication_error",
    "permission_error",
    "not_found_error",
    "request_too_large",
    "rate_limit_error",
    "timeout_error",
    "overloaded_error",
    "api_error",
    "billing_error",
]


MAX_MESSAGE_CHARS = 2000


class ErrorDetail(ResponseModel):
    type: ErrorType
    message: str


class ErrorResponse(ResponseModel):
    type: Literal["error"] = "error"
    error: ErrorDetail
    request_id: str | None = None


class APIError(Exception):
    """An error the client should see, with its HTTP status and Anthropic error type."""

    status_code: ClassVar[int] = 500
    error_type: ClassVar[ErrorType] = "api_error"

    def __init__(self, message: str) -> None:
        if len(message) > MAX_MESSAGE_CHARS:  # a message that echoes a huge value sent
            cut = len(message) - MAX_MESSAGE_CHARS
            message = f"{message[:MAX_MESSAGE_CHARS]}… ({cut} more characters)"
        super().__init__(message)
        self.message = message

    def detail(self) -> ErrorDetail:
        return ErrorDetail(type=self.error_type, message=self.message)


class InvalidRequestError(APIError):
    status_code = 400
    error_type = "invalid_request_error"


class AuthenticationError(APIError):
    status_code = 401
    error_type = "authentication_error"


class PermissionDeniedError(APIError):
    status_code = 403
    error_type = "permission_error"


class MethodNotAllowedError(InvalidRequestError):
    status_code = 405


class NotFoundError(APIError):
    status_code = 404
    error_type = "not_found_error"


class RequestTooLargeError(APIError):
    status_code = 413
    error_type = "request_too_large"


class OverloadedError(APIError):
    status_code = 529
    error_type = "overloaded_error"


class InternalError(APIError):
    status_code = 500
    error_type = "api_error"


class PromptTooLongError(InvalidRequestError):
    """The prompt does not fit the context window. Claude Code compacts on exactly this wording."""

    def __init__(self, prompt_tokens: int, maximum: int) -> None:
        super().__init__(f"prompt is too long: {prompt_tokens} tokens > {maximum} maximum")
        self.prompt_tokens = prompt_tokens
        self.maximum = maximum
