"""Ray Serve deployment of the animal classifier: FastAPI ingress, dynamic batching, safe uploads.

Routes (JSON in/out)::

    POST /predict         one image: multipart field ``file`` or the raw body; ``?top_k=N``
    POST /predict/batch   several images: multipart field ``files`` (repeated); ``?top_k=N``
    GET  /healthz         replica id, pid, model version, last model-load error
    GET  /metadata        classes, arch, model version, metrics, preprocessing, limits

Run it::

    serve run serve.app:build_app model=models:/animalclf@champion top_k=5
    serve run serve.app:app                      # model from $ANIMALCLF_MODEL or the champion
    serve deploy serve/config.yaml               # production: replicas, autoscaling, user_config
    python serve/deploy.py --model PATH_OR_URI   # same, from Python (see serve/deploy.py)

A bad upload is the client's fault and answers 4xx ``{"error": "..."}``; overload answers 503
with ``Retry-After`` from Serve's proxy (``max_queued_requests``); a new ``user_config.model_ref``
swaps the weights in place and a failed load keeps the old model serving.
"""

# No `from __future__ import annotations` here: FastAPI must see real types (Request) on the
# routes that Serve wraps.

import asyncio
import logging
import os
import time
from typing import Any, Optional

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from animalclf.errors import InvalidImage
from animalclf.predict import MAX_BYTES, MAX_PIXELS, Predictor

log = logging.getLogger("ray.serve")

__all__ = ["Classifier", "app", "build_app", "DEFAULT_MODEL", "DEPLOYMENT_NAME"]

DEFAULT_MODEL = "models:/animalclf@champion"
DEPLOYMENT_NAME = "Classifier"
MAX_IMAGES = 16  # images per /predict/batch request
MULTIPART_OVERHEAD = 64 * 1024
BODY_TIMEOUT_S = 10.0  # the whole request body must arrive within this (else 408)
ROUTES = ("/predict", "/predict/batch", "/healthz", "/metadata")


class ClientError(Exception):
    """A request the client must fix; becomes ``{"error": message}`` with ``status``."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------------------------------------
# Metrics (ray.util.metrics → the Ray node's Prometheus endpoint, names prefixed with ``ray_``)
# ---------------------------------------------------------------------------------------------
_METRICS: dict[str, Any] = {}


def _metrics() -> dict[str, Any]:
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
            "animalclf_batch_size", description="Images per model forward pass (dynamic batching).",
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
    return _error(exc.status, str(exc))


@fastapi_app.exception_handler(InvalidImage)
async def _invalid_image(request: Request, exc: InvalidImage) -> JSONResponse:
    return _error(exc.status, str(exc))


@fastapi_app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))


@fastapi_app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return _error(400, f"invalid request: {exc.errors()}")


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
    m = _metrics()
    m["requests"].inc(tags={"route": route, "status": str(status)})
    if status >= 400:
        m["errors"].inc(tags={"route": route, "status": str(status)})
    m["latency"].observe((time.perf_counter() - t0) * 1000, tags={"route": route})
    return response


# ---------------------------------------------------------------------------------------------
# The deployment
# ---------------------------------------------------------------------------------------------
@serve.deployment(
    name=DEPLOYMENT_NAME,
    max_ongoing_requests=32,
    max_queued_requests=64,
    backpressure_config={"status_code": 503, "retry_after_s": 1},
    ray_actor_options={"num_cpus": 1},
    health_check_period_s=10,
    graceful_shutdown_timeout_s=20,
)
@serve.ingress(fastapi_app)
class Classifier:
    """One model per replica; requests are decoded in threads and batched for the forward pass."""

    def __init__(self, model_ref: str = DEFAULT_MODEL, top_k: int = 5, max_batch_size: int = 16,
                 batch_wait_timeout_s: float = 0.005, max_images: int = MAX_IMAGES, max_bytes: int = MAX_BYTES,
                 max_pixels: int = MAX_PIXELS, tracking_uri: Optional[str] = None, device: str = "cpu",
                 num_threads: Optional[int] = None, body_timeout_s: float = BODY_TIMEOUT_S):
        if tracking_uri:
            os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
        if num_threads:
            torch.set_num_threads(int(num_threads))
        self.device = device
        self.max_bytes, self.max_pixels = int(max_bytes), int(max_pixels)
        self.body_timeout_s = float(body_timeout_s)
        self.top_k_default, self.max_images = int(top_k), int(max_images)
        self.last_load_error: Optional[str] = None
        self.model_ref = model_ref
        self.loaded_at = time.time()
        self.predictor = Predictor.load(model_ref, device)  # no model, no replica: fail the start
        self._apply_batching(max_batch_size, batch_wait_timeout_s)
        try:
            ctx = serve.get_replica_context()
            self.replica_id = ctx.replica_id.unique_id
        except Exception:
            self.replica_id = f"pid-{os.getpid()}"
        log.info("Replica %s serving %s (%s)", self.replica_id, self.predictor.version, model_ref)

    # -- configuration ------------------------------------------------------------------------
    def _apply_batching(self, max_batch_size: int, batch_wait_timeout_s: float) -> None:
        self.max_batch_size, self.batch_wait_timeout_s = int(max_batch_size), float(batch_wait_timeout_s)
        if self.max_batch_size < 1 or self.batch_wait_timeout_s < 0:
            raise ValueError(f"max_batch_size must be >= 1 and batch_wait_timeout_s >= 0, got {max_batch_size}, {batch_wait_timeout_s}")
        self._infer.set_max_batch_size(self.max_batch_size)
        self._infer.set_batch_wait_timeout_s(self.batch_wait_timeout_s)

    async def reconfigure(self, config: dict[str, Any]) -> None:
        """``user_config``: ``model_ref`` (swap weights), ``top_k``, ``max_batch_size``,
        ``batch_wait_timeout_s``, ``max_images``. A model that fails to load is logged and
        reported in /healthz and /metadata while the old one keeps serving."""
        config = dict(config or {})
        if "max_batch_size" in config or "batch_wait_timeout_s" in config:
            self._apply_batching(config.get("max_batch_size", self.max_batch_size),
                                 config.get("batch_wait_timeout_s", self.batch_wait_timeout_s))
        if "top_k" in config:
            self.top_k_default = int(config["top_k"])
        if "max_images" in config:
            self.max_images = int(config["max_images"])
        ref = config.get("model_ref")
        if ref and ref != self.model_ref:
            t0 = time.perf_counter()
            try:
                new = await asyncio.to_thread(Predictor.load, ref, self.device)
            except Exception as e:
                self.last_load_error = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} loading {ref}: {type(e).__name__}: {e}"
                log.error("Model swap to %s failed; still serving %s. %s", ref, self.predictor.version, self.last_load_error)
                return
            self.predictor, self.model_ref, self.loaded_at = new, ref, time.time()  # one atomic swap
            self.last_load_error = None
            log.info("Swapped model to %s (%s) in %.1f s", new.version, ref, time.perf_counter() - t0)

    # -- inference ------------------------------------------------------------------------------
    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _infer(self, items: list[tuple[Predictor, torch.Tensor]]) -> list[tuple[Predictor, torch.Tensor]]:
        """Probabilities per image; items carry the predictor that preprocessed them, so a batch
        that straddles a model swap still runs each image through its own model."""
        _metrics()["batch_size"].observe(len(items))
        out: list[Optional[tuple[Predictor, torch.Tensor]]] = [None] * len(items)
        groups: dict[int, list[int]] = {}
        for i, (p, _) in enumerate(items):
            groups.setdefault(id(p), []).append(i)
        for idx in groups.values():
            p = items[idx[0]][0]
            probs = await asyncio.to_thread(p.predict_tensors, torch.stack([items[i][1] for i in idx]))
            for i, pr in zip(idx, probs):
                out[i] = (p, pr)
        return out  # type: ignore[return-value]

    def _prepare(self, data: bytes, predictor: Predictor) -> torch.Tensor:
        return predictor.tensor(predictor.decode(data, self.max_bytes, self.max_pixels))

    async def _classify(self, blobs: list[bytes], top_k: int) -> tuple[list[list[dict]], str]:
        predictor = self.predictor
        tensors = []
        for i, b in enumerate(blobs):
            try:
                tensors.append(await asyncio.to_thread(self._prepare, b, predictor))
            except InvalidImage as e:
                if len(blobs) > 1:
                    raise InvalidImage(f"image {i}: {e}", e.status) from None
                raise
        results = await asyncio.gather(*(self._infer((predictor, t)) for t in tensors))
        version = results[0][0].version if results else predictor.version
        return [p.top_k(pr, top_k) for p, pr in results], version

    def _top_k(self, request: Request) -> int:
        raw = request.query_params.get("top_k")
        if raw is None:
            return min(self.top_k_default, len(self.predictor.classes))
        try:
            k = int(raw)
        except ValueError:
            raise ClientError(f"top_k must be an integer, got {raw!r}") from None
        if not 1 <= k <= len(self.predictor.classes):
            raise ClientError(f"top_k must be between 1 and {len(self.predictor.classes)}, got {k}")
        return k

    def _check_length(self, request: Request, limit: int) -> None:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise ClientError(f"request body is {length} bytes; the limit is {limit} bytes", 413)

    def _guarded(self, request: Request, limit: int) -> Request:
        """The same request, whose body is cut off at ``limit`` bytes (413) and at
        ``body_timeout_s`` (408) while it streams in, with or without Content-Length: a chunked
        upload cannot grow past the limit, and a client trickling bytes cannot keep its slot."""
        self._check_length(request, limit)
        receive, timeout_s = request.receive, self.body_timeout_s
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

    async def _read_body(self, request: Request) -> bytes:
        return b"".join([chunk async for chunk in request.stream()])

    async def _files(self, request: Request, field: str, max_files: int) -> list[bytes]:
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
                data = await u.read(self.max_bytes + 1)
                if len(data) > self.max_bytes:
                    raise InvalidImage(f"{u.filename or 'image'} is over the limit of {self.max_bytes} bytes", 413)
                blobs.append(data)
            return blobs
        finally:
            await form.close()

    # -- routes ---------------------------------------------------------------------------------
    @fastapi_app.post("/predict")
    async def predict(self, request: Request) -> JSONResponse:
        t0 = time.perf_counter()
        top_k = self._top_k(request)
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            blobs = await self._files(self._guarded(request, self.max_bytes + MULTIPART_OVERHEAD), "file", 1)
            if len(blobs) != 1:
                raise ClientError("send one image in field 'file' (use /predict/batch for several)")
        else:
            blobs = [await self._read_body(self._guarded(request, self.max_bytes))]
        preds, version = await self._classify(blobs, top_k)
        _metrics()["images"].inc(1, tags={"route": "/predict"})
        return JSONResponse({"predictions": preds[0], "model_version": version,
                             "latency_ms": round((time.perf_counter() - t0) * 1000, 2)})

    @fastapi_app.post("/predict/batch")
    async def predict_batch(self, request: Request) -> JSONResponse:
        t0 = time.perf_counter()
        top_k = self._top_k(request)
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise ClientError("send images as multipart/form-data, one part per image in field 'files'", 415)
        limit = self.max_images * (self.max_bytes + MULTIPART_OVERHEAD)
        blobs = await self._files(self._guarded(request, limit), "files", self.max_images)
        preds, version = await self._classify(blobs, top_k)
        _metrics()["images"].inc(len(blobs), tags={"route": "/predict/batch"})
        return JSONResponse({"results": [{"predictions": p} for p in preds], "model_version": version,
                             "latency_ms": round((time.perf_counter() - t0) * 1000, 2)})

    @fastapi_app.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        return {"status": "ok", "replica": self.replica_id, "pid": os.getpid(),
                "model_version": self.predictor.version, "model_ref": self.model_ref,
                "last_load_error": self.last_load_error}

    @fastapi_app.get("/metadata")
    async def metadata(self) -> dict[str, Any]:
        return {**self.predictor.metadata(), "model_ref": self.model_ref, "loaded_at": self.loaded_at,
                "last_load_error": self.last_load_error, "replica": self.replica_id,
                "limits": {"max_bytes": self.max_bytes, "max_pixels": self.max_pixels, "max_images": self.max_images,
                           "body_timeout_s": self.body_timeout_s},
                "batching": {"max_batch_size": self.max_batch_size, "batch_wait_timeout_s": self.batch_wait_timeout_s},
                "top_k_default": self.top_k_default}


# ---------------------------------------------------------------------------------------------
# Builders
# ---------------------------------------------------------------------------------------------
def _bool(v: Any) -> bool:
    return v if isinstance(v, bool) else str(v).lower() in ("1", "true", "yes", "on")


def build_app(args: Optional[dict[str, Any]] = None):
    """Application builder for ``serve run serve.app:build_app key=value ...`` and config files.

    Keys: ``model`` (checkpoint dir or MLflow URI; default ``$ANIMALCLF_MODEL`` or the champion),
    ``top_k``, ``batching`` (false = batch size 1), ``max_batch_size``, ``batch_wait_timeout_s``,
    ``max_ongoing_requests``, ``max_queued_requests``, ``num_replicas``, ``num_cpus``, ``num_gpus``,
    ``max_images``, ``max_bytes``, ``max_pixels``, ``tracking_uri``, ``num_threads``.
    """
    a = dict(args or {})
    model = str(a.get("model") or a.get("model_ref") or os.environ.get("ANIMALCLF_MODEL") or DEFAULT_MODEL)
    tracking_uri = a.get("tracking_uri")
    if tracking_uri is None and model.startswith(("models:/", "runs:/")):
        from animalclf.tracking import resolve_tracking

        tracking_uri = resolve_tracking()["MLFLOW_TRACKING_URI"]  # the URI only: secrets stay in env
    batching = _bool(a.get("batching", True))
    max_batch = int(a.get("max_batch_size", 16)) if batching else 1
    wait = float(a.get("batch_wait_timeout_s", 0.005)) if batching else 0.0
    top_k = int(a.get("top_k", 5))
    gpus = float(a.get("num_gpus", 0))
    device = "cuda" if gpus > 0 else "cpu"
    options: dict[str, Any] = {
        "max_ongoing_requests": int(a.get("max_ongoing_requests", 32)),
        "max_queued_requests": int(a.get("max_queued_requests", 64)),
        "ray_actor_options": {"num_cpus": float(a.get("num_cpus", 1)), "num_gpus": gpus},
        "user_config": {"model_ref": model, "top_k": top_k, "max_batch_size": max_batch, "batch_wait_timeout_s": wait},
    }
    if "num_replicas" in a:
        options["num_replicas"] = a["num_replicas"] if a["num_replicas"] == "auto" else int(a["num_replicas"])
    return Classifier.options(**options).bind(
        model_ref=model, top_k=top_k, max_batch_size=max_batch, batch_wait_timeout_s=wait,
        max_images=int(a.get("max_images", MAX_IMAGES)), max_bytes=int(a.get("max_bytes", MAX_BYTES)),
        max_pixels=int(a.get("max_pixels", MAX_PIXELS)), tracking_uri=tracking_uri, device=device,
        num_threads=int(a["num_threads"]) if a.get("num_threads") else None,
        body_timeout_s=float(a.get("body_timeout_s", BODY_TIMEOUT_S)),
    )


app = build_app({})
