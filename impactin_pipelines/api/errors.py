"""Every error the API answers is JSON of one shape: `{"error": title, "message": text, ...}` (the original
service's shape, so existing clients keep working), with `details` naming each bad field on a 400.

Nothing else leaves: an unexpected exception becomes a 500 with an id to find it in the log, never a trace.
"""

import json
import logging
import math
import re
import uuid
from typing import Any

import sqlalchemy as sa
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Match

from impactin_pipelines.domain.errors import InvalidEvent

LOG = logging.getLogger("impactin.api")
_MAX_ECHO_CHARS = 80
# JSON's "\ud800" escape decodes to a lone surrogate: a str Python holds but UTF-8 (so no response) cannot encode.
LONE_SURROGATE = re.compile("[\ud800-\udfff]")

# A snake_case event field (as domain/events names it) -> where it sits in the `POST /deliver` body.
_DELIVER_FIELDS = {
    "company_id": "companyId",
    "event_id": "event.eventId",
    "user_id": "event.userId",
    "event_type": "event.eventType",
    "occurred_at": "event.timestamp",
    "value": "event.value",
    "unit": "event.unit",
    "outcome_scores": "event.outcomeScores",
    "metadata": "event.metadata",
}


class ApiJSONResponse(JSONResponse):
    """JSON that always encodes: a lone surrogate that slipped into a message goes out as its JSON escape."""

    def render(self, content: Any) -> bytes:
        text = json.dumps(content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":"))
        return text.encode("utf-8", errors="backslashreplace")


class ApiError(Exception):
    def __init__(self, status: int, error: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.error, self.message, self.extra = status, error, message, extra

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        return error_response(self.status, self.error, self.message, headers=headers, **self.extra)


def error_response(
    status: int, error: str, message: str, *, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    return ApiJSONResponse({"error": error, "message": message, **extra}, status_code=status, headers=headers)


def printable(text: str) -> str:
    """Text as UTF-8 can carry it: each lone surrogate written as its escape (`\\ud800`)."""
    return LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def echo(value: Any) -> Any:
    """A bad value as it may be shown back: scalars as they are, long text cut, structures by type only."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)  # JSON has no inf or nan
    if isinstance(value, str):
        value = printable(value)
        return value if len(value) <= _MAX_ECHO_CHARS else value[: _MAX_ECHO_CHARS - 3] + "..."
    return f"<{type(value).__name__}>"


def field_error(field: str, message: str, value: Any = None, *, with_value: bool = True) -> dict[str, Any]:
    detail: dict[str, Any] = {"field": printable(field), "message": message}
    if with_value:
        detail["value"] = echo(value)
    return detail


def bad_request(details: list[dict[str, Any]]) -> ApiError:
    summary = "; ".join(f"{d['field']}: {d['message']}" for d in details)
    return ApiError(400, "Validation error", summary, details=details)


def validation_details(exc: ValidationError, *, prefix: str = "") -> list[dict[str, Any]]:
    details = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "body"
        message = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "is not a known field"
        elif err["type"] == "missing":
            message = "is required"
        details.append(field_error(prefix + loc, message, err.get("input"), with_value=err["type"] != "missing"))
    return details


def invalid_event_detail(exc: InvalidEvent) -> dict[str, Any]:
    head, _, rest = exc.field.partition(".")
    where = _DELIVER_FIELDS.get(head, f"event.{head}")
    return field_error(where + (f".{rest}" if rest else ""), exc.reason, exc.value)


# -- handlers ----------------------------------------------------------------------------------------------------
async def on_api_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return exc.response()


async def on_validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ValidationError)
    return bad_request(validation_details(exc)).response()


async def on_invalid_event(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, InvalidEvent)
    return bad_request([invalid_event_detail(exc)]).response()


async def on_http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    titles = {404: "Not found", 405: "Method not allowed"}
    message = {404: "no such route", 405: "method not allowed on this route"}.get(exc.status_code, str(exc.detail))
    if exc.status_code == 404 and (route := _route_without_trailing_slash(request)) is not None:
        message = f"no such route; without the trailing slash it is {route}"
    return error_response(
        exc.status_code, titles.get(exc.status_code, "Error"), message, headers=dict(exc.headers or {}) or None
    )


def _route_without_trailing_slash(request: Request) -> str | None:
    """The path without its trailing slash, when that is a route (`/deliveries/` for `/deliveries`)."""
    path = request.url.path
    if path == "/" or not path.endswith("/"):
        return None
    scope = {**request.scope, "path": path.rstrip("/")}
    for route in request.app.router.routes:
        if route.matches(scope)[0] is not Match.NONE:
            return scope["path"]
    return None


async def on_database_error(request: Request, exc: Exception) -> JSONResponse:
    """The warehouse is unreachable: a state for retry (503), not a bug, and no driver message leaves."""
    LOG.error(f"{request.method} {request.url.path}: database unavailable: {type(exc).__name__}")
    return error_response(503, "Service unavailable", "the warehouse database is unavailable; try again later")


async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    ref = uuid.uuid4().hex[:12]
    LOG.error(f"{request.method} {request.url.path}: unexpected error (ref {ref})", exc_info=exc)
    return error_response(500, "Internal server error", f"an unexpected error occurred (ref {ref})", ref=ref)


EXCEPTION_HANDLERS = {
    ApiError: on_api_error,
    ValidationError: on_validation_error,
    InvalidEvent: on_invalid_event,
    HTTPException: on_http_exception,
    sa.exc.OperationalError: on_database_error,
    sa.exc.InterfaceError: on_database_error,
    Exception: on_unexpected,
}
