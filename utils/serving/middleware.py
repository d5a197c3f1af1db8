"""ASGI middleware of the service (body limit, metrics and X-Served-By) and its one error shape."""
from __future__ import annotations

import logging
import time
from typing import Dict, Optional

from .metrics import Metrics
from .requests import RequestError

logger = logging.getLogger(__name__)


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes gets 413 before it is parsed (the
    service's JSON error, field "body"): at once from its Content-Length (the body is never read),
    or, sent chunked, as soon as the bytes read pass the limit. Without it one request could make
    the service read and parse any amount of JSON."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        from starlette.datastructures import Headers

        declared = Headers(scope=scope).get("content-length")
        if declared is not None:
            if declared.isdigit() and int(declared) > self.limit:
                return await self.too_large(int(declared), scope, receive, send)
            return await self.app(scope, receive, send)  # the server holds the body to its length
        chunks, size = [], 0
        while True:  # chunked: read up to the limit, then hand the app the whole body
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                return await self.too_large(size, scope, receive, send, exact=False)
            if not message.get("more_body"):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    async def too_large(self, size: int, scope, receive, send, exact: bool = True) -> None:
        message = (f"the request body is {'' if exact else 'over '}{size:,} bytes, more than this service reads "
                   f"({self.limit:,}, set by --max_texts_per_request and --max_chars_per_text)")
        response = error_response(413, "body", message, {"Connection": "close"}, scope.get("path", ""))
        await response(scope, receive, send)


class Measure:
    """ASGI middleware: each HTTP request counted and timed in `metrics` by endpoint (the route's
    path template, "other" when none matched) and status, and `X-Served-By: served_by` added to
    every response. Plain ASGI: Starlette's BaseHTTPMiddleware (`@app.middleware("http")`) spent
    ~30% of the event loop's time per request here on its task group and streams."""

    def __init__(self, app, metrics: Metrics, served_by: Optional[str] = None):
        self.app, self.metrics = app, metrics
        self.served_by = [(b"x-served-by", served_by.encode("latin-1"))] if served_by else []

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500  # (500: the app raised before answering)

        async def measured_send(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if self.served_by:
                    message = {**message, "headers": [*message.get("headers", ()), *self.served_by]}
            await send(message)

        self.metrics.in_progress.inc()
        try:
            await self.app(scope, receive, measured_send)
        finally:
            self.metrics.in_progress.dec()
            endpoint = getattr(scope.get("route"), "path", "other")  # (set in `scope` by the router)
            self.metrics.requests.labels(endpoint, str(status)).inc()
            if status >= 400:
                self.metrics.errors.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)


OIP_PREFIX = "/v2"  # the Open Inference Protocol's routes: its own error shape


def error_response(status: int, field: str, message: str, headers: Optional[Dict[str, str]] = None,
                   path: str = ""):
    """The service's one error shape: `{"error": {"status", "field", "message"}}`; under /v2 (the
    Open Inference Protocol's routes, `path`) the protocol's: `{"error": "field: message"}`."""
    from starlette.responses import JSONResponse

    if path == OIP_PREFIX or path.startswith(OIP_PREFIX + "/"):
        body = {"error": message if field in ("service", "body", "path") else f"{field}: {message}"}
    else:
        body = {"error": {"status": status, "field": field, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers or {})


async def request_error(request, exc: RequestError):
    return error_response(exc.status, exc.field, exc.message, exc.headers, request.url.path)


async def validation_error(request, exc):
    first = exc.errors()[0] if exc.errors() else {}
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    if first.get("type") == "json_invalid":
        return error_response(400, "body", f"malformed JSON: {first.get('msg', '')}".rstrip(": "),
                              path=request.url.path)
    return error_response(422, ".".join(location) or "body", first.get("msg", "invalid request"),
                          path=request.url.path)


async def http_error(request, exc):
    # FastAPI's 400 is a body it could not parse (not UTF-8, nested too deep for Python's parser)
    field = {404: "path", 400: "body"}.get(exc.status_code, "request")
    return error_response(exc.status_code, field, str(exc.detail), path=request.url.path)


async def internal_error(request, exc: Exception):  # a bug: logged here, no trace to the client
    logger.exception("internal error")
    return error_response(500, "service", "internal error (logged by the service)", path=request.url.path)


def add_error_handlers(app) -> None:
    """Every error `app` answers in the service's shape: refused requests, FastAPI's own 4xx
    (validation, unparsable bodies, unknown paths) and bugs (500, logged, no trace)."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    for kind, handler in ((RequestError, request_error), (RequestValidationError, validation_error),
                          (HTTPException, http_error), (Exception, internal_error)):
        app.add_exception_handler(kind, handler)
