"""The classifier's HTTP plumbing, apart from the model: the FastAPI app with its JSON error
handlers and metrics middleware, and reading an untrusted request body within limits (bytes,
time, files) whether it comes with ``Content-Length``, chunked or as multipart."""

# No `from __future__ import annotations`: FastAPI inspects the handlers' real types.

import asyncio
import logging
import time
from typing import Any, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from animalclf.errors import InvalidImage

log = logging.getLogger("ray.serve")

__all__ = ["ClientError", "fastapi_app", "metrics", "guarded", "read_body", "read_files", "MULTIPART_OVERHEAD",
           "JSONErrors", "proxy_middlewares", "PROXY_CALLBACK", "PROXY_CALLBACK_ENV"]

MULTIPART_OVERHEAD = 64 * 1024
ROUTES = ("/predict", "/predict/batch", "/healthz", "/metadata", "/infer")


class ClientError(Exception):
    """A request the client must fix (or retry); becomes ``{"error": message}`` with ``status``
    and ``headers``."""

    def __init__(self, message: str, status: int = 400, headers: Optional[dict[str, str]] = None):
        super().__init__(message)
        self.status = status
        self.headers = headers


# ---------------------------------------------------------------------------------------------
# Metrics (ray.util.metrics → the Ray node's Prometheus endpoint, names prefixed with ``ray_``)
# ---------------------------------------------------------------------------------------------
_METRICS: dict[str, Any] = {}


def metrics() -> dict[str, Any]:
    """Created lazily inside the replica process (never in the driver that only binds the app)."""
    if not _METRICS:
        from ray.util.metrics import Counter, Histogram

        _METRICS["requests"] = Counter(
            "animalclf_requests", description="HTTP requests answered by the classifier, by route and status code.",
            tag_keys=("route", "status"))
        _METRICS["errors"] = Counter(
            "animalclf_errors", description="HTTP requests answered with a 4xx/5xx by the classifier, by route and status code.",
            tag_keys=("route", "status"))
        _METRICS["latency"] = Histogram(
            "animalclf_request_latency_ms", description="Time to answer a request inside the replica (ms).",
            boundaries=[1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000], tag_keys=("route",))
        _METRICS["images"] = Counter(
            "animalclf_images", description="Images classified.", tag_keys=("route",))
        _METRICS["batch_size"] = Histogram(
            "animalclf_batch_size", description="Images per batch (dynamic batching; a batch is split over the replica's forward passes).",
            boundaries=[1, 2, 4, 8, 16, 32, 64])
    return _METRICS


# ---------------------------------------------------------------------------------------------
# FastAPI app: error handlers and a metrics middleware; routes live on the deployment class.
# ---------------------------------------------------------------------------------------------
fastapi_app = FastAPI(title="animalclf", description="15-species animal image classifier", version="1")


def _error(status: int, message: str, headers: Optional[dict] = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


@fastapi_app.exception_handler(ClientError)
async def _client_error(request: Request, exc: ClientError) -> JSONResponse:
    return _error(exc.status, str(exc), exc.headers)


@fastapi_app.exception_handler(InvalidImage)
async def _invalid_image(request: Request, exc: InvalidImage) -> JSONResponse:
    return _error(exc.status, str(exc))


@fastapi_app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))


@fastapi_app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    why = "; ".join(f"{' '.join(map(str, e.get('loc', ())))}: {e.get('msg', '')}" for e in exc.errors())
    return _error(400, f"invalid request: {why}")


@fastapi_app.middleware("http")
async def _count(request: Request, call_next):
    t0 = time.perf_counter()
    path = request.url.path.rstrip("/") or "/"
    route = next((r for r in ROUTES if path.endswith(r)), "other")
    try:
        response = await call_next(request)
        status = response.status_code
    except Exception:  # a bug, not the client's fault: log it, answer JSON, keep the replica
        log.exception("Unhandled error on %s", route)
        response, status = _error(500, "internal error while classifying; see the replica log"), 500
    m = metrics()
    m["requests"].inc(tags={"route": route, "status": str(status)})
    if status >= 400:
        m["errors"].inc(tags={"route": route, "status": str(status)})
    m["latency"].observe((time.perf_counter() - t0) * 1000, tags={"route": route})
    return response



# ---------------------------------------------------------------------------------------------
# The proxy's own answers (503 overload or no replica, 408 timeout, 404 no app): JSON too
# ---------------------------------------------------------------------------------------------
PROXY_CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"  # read by Serve's proxy when it starts
PROXY_CALLBACK = "serve.web:proxy_middlewares"


class JSONErrors:
    """ASGI middleware for Serve's HTTP proxy: an error it answers in plain text (Serve's own 503,
    408, 404, 500) becomes ``{"error": text}`` with the same status and headers; everything else,
    our app's JSON answers included, passes untouched."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start: Optional[dict] = None
        body: list[bytes] = []

        async def wrapped(message):
            nonlocal start
            if message["type"] == "http.response.start":
                headers = {k.lower(): v for k, v in message.get("headers", [])}
                if message["status"] >= 400 and headers.get(b"content-type", b"").startswith(b"text/plain"):
                    start = message  # hold it: the body becomes JSON
                    return
            elif message["type"] == "http.response.body" and start is not None:
                body.append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                import json

                text = b"".join(body).decode("utf-8", "replace").strip() or "error"
                content = json.dumps({"error": text}).encode()
                headers = [(k, v) for k, v in start.get("headers", [])
                           if k.lower() not in (b"content-type", b"content-length")]
                headers += [(b"content-type", b"application/json"), (b"content-length", str(len(content)).encode())]
                await send({**start, "headers": headers})
                await send({"type": "http.response.body", "body": content})
                return
            await send(message)

        await self.app(scope, receive, wrapped)


def proxy_middlewares() -> list:
    """What ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=serve.web:proxy_middlewares`` gives Serve's
    proxy (set in the head's environment by :mod:`animalclf.runtime.localray`, ``make head-start``
    and cluster.yaml)."""
    from starlette.middleware import Middleware

    return [Middleware(JSONErrors)]


# ---------------------------------------------------------------------------------------------
# Request bodies within limits
# ---------------------------------------------------------------------------------------------
def guarded(request: Request, limit: int, timeout_s: float) -> Request:
    """The same request, whose body is cut off at ``limit`` bytes (413) and at ``timeout_s``
    (408) while it streams in, with or without Content-Length: a chunked upload cannot grow past
    the limit, and a client trickling bytes cannot keep its slot."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise ClientError(f"request body is {length} bytes; the limit is {limit} bytes", 413)
    receive = request.receive
    deadline, seen = time.monotonic() + timeout_s, 0

    async def limited() -> dict:
        nonlocal seen
        try:
            message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            raise ClientError(f"the request body did not arrive within {timeout_s:g} s; "
                              "send it in one go (or a smaller image)", 408) from None
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise ClientError(f"request body is over the limit of {limit} bytes", 413)
        return message

    return Request(request.scope, limited)


async def read_body(request: Request) -> bytes:
    return b"".join([chunk async for chunk in request.stream()])


async def read_files(request: Request, field: str, max_files: int, max_bytes: int) -> list[bytes]:
    """The files of multipart field ``field``: at least one, at most ``max_files``, each at most
    ``max_bytes``; anything else is a :class:`ClientError`."""
    try:
        form = await request.form(max_files=max_files + 1, max_fields=max_files + 16)
    except ClientError:
        raise
    except StarletteHTTPException as e:
        status = 413 if "Too many files" in str(e.detail) else 400
        raise ClientError(f"bad multipart body: {e.detail}", status) from None
    except Exception as e:
        raise ClientError(f"bad multipart body: {e}") from None
    try:
        uploads = [v for v in form.getlist(field) if hasattr(v, "read")]
        if not uploads:
            fields = sorted(set(form.keys()))
            raise ClientError(f"multipart body has no file field {field!r} (fields sent: {fields})")
        if len(uploads) > max_files:
            raise ClientError(f"{len(uploads)} images sent; the limit is {max_files} per request", 413)
        blobs = []
        for u in uploads:
            data = await u.read(max_bytes + 1)
            if len(data) > max_bytes:
                raise InvalidImage(f"{u.filename or 'image'} is over the limit of {max_bytes} bytes", 413)
            blobs.append(data)
        return blobs
    finally:
        await form.close()
