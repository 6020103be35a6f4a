"""Errors as the OpenAI API sends them: `{"error": {"message", "type", "param", "code"}}` + a status.

A pipeline failure (`RequestError.kind`) maps to one status (`KIND_STATUS`); the server's own checks
raise `APIError` directly. `install_handlers` makes FastAPI answer validation errors (its 422), unknown
routes and unexpected exceptions in the same JSON.
"""

from __future__ import annotations

import logging

logger = logging.getLogger("spava.server")

# RequestError.kind -> (HTTP status, OpenAI error type)
KIND_STATUS = {
    "bad_input": (400, "invalid_request_error"),
    "overloaded": (429, "rate_limit_error"),
    "unhealthy": (503, "service_unavailable_error"),
    "timeout": (504, "timeout_error"),
    "cancelled": (500, "server_error"),
    "worker_died": (500, "server_error"),
    "internal": (500, "server_error"),
}


class APIError(Exception):
    """An answer other than 200: status, message, and the OpenAI error fields."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def from_request_error(error, retry_after_s: int) -> APIError:
    """The APIError for a pipeline `RequestError`; the message keeps the failing stage."""
    status, error_type = KIND_STATUS.get(error.kind, (500, "server_error"))
    headers = {"Retry-After": str(retry_after_s)} if status == 429 else None
    return APIError(status, str(error), type=error_type, code=error.kind, headers=headers)


def _param(location: tuple) -> str | None:
    """FastAPI's error location ("body", "messages", 0, "role") -> "messages[0].role"."""
    text = ""
    for item in location[1:] if location and location[0] == "body" else location:
        text += f"[{item}]" if isinstance(item, int) else (f".{item}" if text else str(item))
    return text or None


def validation_error(errors: list[dict]) -> APIError:
    """A 400 for FastAPI's request validation errors (first one named; the count of others)."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    param = _param(tuple(first.get("loc", ())))
    if first.get("type") == "json_invalid":
        return bad_request(f"the request body is not valid JSON: {first.get('msg')}", None, "invalid_json")
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    where = f"{param}: " if param else ""
    return bad_request(f"{where}{first.get('msg', 'invalid value')}{more}", param, "invalid_value")


def install_handlers(app) -> None:
    """Answer every error of `app` as OpenAI error JSON."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    def respond(error: APIError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    async def on_api_error(request, error: APIError):
        return respond(error)

    async def on_validation_error(request, error: RequestValidationError):
        return respond(validation_error(list(error.errors())))

    async def on_http_error(request, error: HTTPException):
        error_type = "not_found_error" if error.status_code == 404 else "invalid_request_error"
        return respond(APIError(error.status_code, str(error.detail), type=error_type, headers=error.headers))

    async def on_unexpected(request, error: Exception):
        logger.exception("unexpected error serving %s", request.url.path)
        return respond(APIError(500, f"internal server error: {type(error).__name__}", type="server_error",
                                code="internal"))

    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
