"""Reject oversized requests before anything looks at them (bodies are capped again while they are read,
for clients that send no Content-Length)."""

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from impactin_pipelines.api.errors import bad_request, field_error


class RequestLimitsMiddleware:
    def __init__(self, app: ASGIApp, *, max_query_bytes: int, max_body_bytes: int) -> None:
        self.app, self.max_query_bytes, self.max_body_bytes = app, max_query_bytes, max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            problem = self._problem(scope)
            if problem is not None:
                await bad_request([problem]).response()(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _problem(self, scope: Scope) -> dict[str, object] | None:
        query = scope.get("query_string", b"")
        if len(query) > self.max_query_bytes:
            return field_error("query", f"is longer than {self.max_query_bytes} bytes", with_value=False)
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            return field_error("body", f"is larger than {self.max_body_bytes} bytes", with_value=False)
        return None
