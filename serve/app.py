"""Ray Serve deployment of the animal classifier: FastAPI ingress, dynamic batching, safe uploads.

Routes (JSON in/out)::

    POST /predict         one image: multipart field ``file`` or the raw body; ``?top_k=N``
    POST /predict/batch   several images: multipart field ``files`` (repeated); ``?top_k=N``
    GET  /healthz         whether it is ready, nothing else
    GET  /metadata        classes, arch, model version, metrics, preprocessing, limits; with the
                          API key also where the model came from, the settings and load errors

With an API key set (:mod:`serve.auth`) the two POST routes answer 401 without it.

Run it::

    python serve/deploy.py --model-ref models:/animalclf@champion   # follows the alias (serve.deploy)
    serve run serve.app:build_app model_ref=CKPT_DIR top_k=3        # keys: serve.settings.ServeSettings
    serve deploy serve/config.yaml                                  # production config, same keys

A bad upload is the client's fault and answers 4xx ``{"error": "..."}``; every upload's decode
cost is bounded before it is decoded (``max_decode_mib``), decoding runs on a pool of the replica's
own CPUs, and a request still running after ``deadline_s`` stops (503). Overload answers 503
with ``Retry-After`` from Serve's proxy (``max_queued_requests``); a new ``user_config.model_ref``
swaps the weights in place and a failed load keeps the old model serving. Every answer names the
model version that produced it (``model_version``).
"""

# No `from __future__ import annotations` here: FastAPI must see real types (Request) on the
# routes that Serve wraps.

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

import torch
from fastapi import Path as PathParam
from fastapi import Query, Request
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.serve import Application

from animalclf.errors import InvalidImage, UserError
from animalclf.evaluate.registry import is_model_ref
from animalclf.models.predict import Predictor
from animalclf.runtime.allocator import DEFAULT_MMAP_THRESHOLD_MIB, keep_freed_memory, release_freed_memory
from serve import oip
from serve.auth import authorized, read_key
from serve.schemas import (IMAGE_BODY, IMAGES_BODY, INFER_BODY, TOP_K_DOC, BatchResponse, Health, InferResponse, Live,
                           Metadata, ModelMetadata, PredictResponse, Ready, ServerMetadata, error_responses)
from serve.settings import ServeSettings, from_environment
from serve.web import MULTIPART_OVERHEAD, ClientError, fastapi_app, guarded, metrics, read_body, read_files

log = logging.getLogger("ray.serve")

__all__ = ["Classifier", "build_app", "DEPLOYMENT_NAME"]

DEPLOYMENT_NAME = "Classifier"
NAME = PathParam(description="The model's name (animalclf, or the registered model's)", examples=[oip.DEFAULT_NAME])
VERSION = PathParam(description="The model version being served (GET /v2/models/{name})", examples=["1"])


# ---------------------------------------------------------------------------------------------
# The deployment
# ---------------------------------------------------------------------------------------------
@serve.deployment(
    name=DEPLOYMENT_NAME,
    backpressure_config={"status_code": 503, "retry_after_s": 1},
    health_check_period_s=10,
    graceful_shutdown_timeout_s=20,
)
@serve.ingress(fastapi_app)
class Classifier:
    """One model per replica; requests are decoded in threads and batched for the forward pass.

    Built by :func:`build_app` from a :class:`~serve.settings.ServeSettings`: the constructor gets
    the settings (as a dict), ``reconfigure()`` the ``user_config`` part, which carries the model
    to load: the launcher pins it to one version (``models:/NAME/N``) so all replicas agree."""

    def __init__(self, settings: dict[str, Any]):
        s = ServeSettings.from_dict(settings)
        if s.tracking_uri:
            os.environ["MLFLOW_TRACKING_URI"] = s.tracking_uri
        # The replica's torch work runs on its own pool: ``forward_workers`` threads, each computing
        # with ``threads_per_forward`` torch threads, so together they use the CPUs it was given
        # (Ray's default thread count may be fewer). Torch ops from threads of any other pool
        # (asyncio.to_thread's) would each get an OpenMP team of their own, and those teams slow each
        # other down; and on a small CPU, one thread per forward pass with passes side by side beats
        # several threads on one pass, for one image as for a batch (bench/RESULTS.md).
        torch.set_num_threads(s.threads_per_worker)
        # Activations are megabytes: without this, glibc may hand them fresh pages on every forward pass
        # (27 vs 20 ms for a Lite0 forward; animalclf.runtime.allocator).
        self.allocator_tuned = bool(s.mmap_threshold_mib) and keep_freed_memory(s.mmap_threshold_mib)
        self._torch = ThreadPoolExecutor(max_workers=s.forward_workers, thread_name_prefix="torch",
                                         initializer=torch.set_num_threads, initargs=(s.threads_per_worker,))
        # Uploads decode on a pool of the replica's own CPUs, not on the event loop's default pool
        # (as many threads as the machine has cores): at most that many decodes at once.
        self._decode = ThreadPoolExecutor(max_workers=s.threads, thread_name_prefix="decode")
        self._api_key = read_key(s.api_key_file)  # an unreadable key file fails the replica, never opens it
        self.settings = s
        self.predictor: Optional[Predictor] = None
        self.model_ref: Optional[str] = None
        self.loaded_at, self.last_load_error = 0.0, None
        self._apply_batching(s)
        try:
            self.replica_id = serve.get_replica_context().replica_id.unique_id
        except Exception:
            self.replica_id = f"pid-{os.getpid()}"

    # -- configuration ------------------------------------------------------------------------
    def _apply_batching(self, s: ServeSettings) -> None:
        self._infer.set_max_batch_size(s.max_batch_size)
        self._infer.set_batch_wait_timeout_s(s.batch_wait_timeout_s)

    async def reconfigure(self, config: dict[str, Any]) -> None:
        """``user_config``: the ServeSettings ``user_config`` fields (model_ref, top_k, batching,
        limits) plus ``pinned_ref``, the exact version the launcher resolved ``model_ref`` to
        (loaded instead of resolving an alias here, so replicas never disagree). Applied in place.
        The first call loads the model (a failure fails the replica's start); later a model that
        fails to load is logged and shown in /healthz and /metadata while the old one serves."""
        cfg = dict(config or {})
        pinned = cfg.pop("pinned_ref", None)
        try:
            new = self.settings.replace(**cfg)
        except (UserError, TypeError) as e:
            if self.predictor is None:
                raise
            self.last_load_error = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} rejected user_config: {e}"
            log.error("%s", self.last_load_error)
            return
        self._apply_batching(new)
        self.settings = new
        ref = pinned or new.model_ref
        if self.predictor is not None and ref == self.model_ref:
            return
        t0 = time.perf_counter()
        try:
            loaded = await self._on_torch(Predictor.load, ref, new.device)
        except Exception as e:
            if self.predictor is None:
                raise  # no model, no replica
            self.last_load_error = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} loading {ref}: {type(e).__name__}: {e}"
            log.error("Model swap to %s failed; still serving %s. %s", ref, self.predictor.version, self.last_load_error)
            return
        self.predictor, self.model_ref, self.loaded_at = loaded, ref, time.time()  # one atomic swap
        self.last_load_error = None
        log.info("Replica %s serving %s (%s), loaded in %.1f s", self.replica_id, loaded.version, ref, time.perf_counter() - t0)

    def check_health(self) -> None:
        if self.predictor is None:
            raise RuntimeError("no model loaded")

    # -- inference ------------------------------------------------------------------------------
    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _infer(self, items: list[tuple[Predictor, torch.Tensor]]) -> list[tuple[Predictor, torch.Tensor]]:
        """Probabilities per image; items carry the predictor that preprocessed them, so a batch
        that straddles a model swap still runs each image through its own model."""
        metrics()["batch_size"].observe(len(items))
        out: list[Optional[tuple[Predictor, torch.Tensor]]] = [None] * len(items)
        groups: dict[int, list[int]] = {}
        for i, (p, _) in enumerate(items):
            groups.setdefault(id(p), []).append(i)
        for idx in groups.values():
            p = items[idx[0]][0]
            parts = self._split(idx, self.settings.forward_parts(len(idx)))  # run side by side on the forward workers
            probs = await asyncio.gather(*(self._on_torch(self._forward, p, [items[i][1] for i in part]) for part in parts))
            for part, pr in zip(parts, probs):
                for i, row in zip(part, pr):
                    out[i] = (p, row)
        return out  # type: ignore[return-value]

    @staticmethod
    def _forward(p: Predictor, tensors: list[torch.Tensor]) -> torch.Tensor:
        return p.predict_tensors(torch.stack(tensors))

    @staticmethod
    def _split(idx: list[int], n: int) -> list[list[int]]:
        """``idx`` in at most ``n`` contiguous parts of near-equal size (none empty). (Helpers are
        methods: Serve pickles this class by value, and module-level helpers did not travel.)"""
        if not idx:
            return []
        n = max(1, min(n, len(idx)))
        q, r = divmod(len(idx), n)
        bounds = [i * q + min(i, r) for i in range(n + 1)]
        return [idx[a:b] for a, b in zip(bounds, bounds[1:])]

    async def _infer_one(self, p: Predictor, t: torch.Tensor) -> tuple[Predictor, torch.Tensor]:
        metrics()["batch_size"].observe(1)
        return p, (await self._on_torch(self._forward, p, [t]))[0]

    async def _on_torch(self, fn, *args):
        """``fn(*args)`` on one of the replica's torch threads."""
        return await asyncio.get_running_loop().run_in_executor(self._torch, fn, *args)

    async def _prepare(self, data: bytes, predictor: Predictor, costs: list[int]) -> torch.Tensor:
        """Decode (Pillow, no torch: the decode pool, so uploads decode while a batch runs) within
        the decode budget, then the model's preprocessing (torch ops: a torch thread)."""
        s = self.settings
        image = await asyncio.get_running_loop().run_in_executor(
            self._decode, lambda: predictor.decode(data, s.max_bytes, s.max_pixels, s.max_decode_mib << 20, costs.append))
        return await self._on_torch(predictor.tensor, image)

    def _in_time(self, deadline: float) -> None:
        """Stop a request's work once its deadline has passed (its client has most likely gone)."""
        if time.monotonic() > deadline:
            raise ClientError(f"the request took longer than {self.settings.deadline_s:g} s and was stopped; try "
                              "again (or send a smaller image)", 503, {"Retry-After": "1"})

    async def _classify(self, blobs: list[bytes], top_k: int, deadline: float) -> tuple[list[list[dict]], str]:
        predictor, costs = self.predictor, []
        try:
            return await self._classify_within(blobs, top_k, deadline, predictor, costs)
        finally:
            # a large upload's buffers go back to the kernel, not into the heap kept for forward passes
            if sum(costs) + sum(map(len, blobs)) > (self.settings.mmap_threshold_mib or DEFAULT_MMAP_THRESHOLD_MIB) << 20:
                self._decode.submit(release_freed_memory)

    async def _classify_within(self, blobs: list[bytes], top_k: int, deadline: float, predictor: Predictor,
                               costs: list[int]) -> tuple[list[list[dict]], str]:
        tensors = []
        for i, b in enumerate(blobs):
            self._in_time(deadline)
            try:
                tensors.append(await self._prepare(b, predictor, costs))
            except InvalidImage as e:
                if len(blobs) > 1:
                    raise InvalidImage(f"image {i}: {e}", e.status) from None
                raise
        self._in_time(deadline)
        if self.settings.max_batch_size > 1:
            results = await asyncio.gather(*(self._infer((predictor, t)) for t in tensors))
        else:  # no batching: each image is its own forward pass, as many at once as there are workers
            results = await asyncio.gather(*(self._infer_one(predictor, t) for t in tensors))
        version = results[0][0].version if results else predictor.version
        return [p.top_k(pr, top_k) for p, pr in results], version

    def _top_k(self, k: Optional[int]) -> int:
        if k is None:
            return min(self.settings.top_k, len(self.predictor.classes))
        if not 1 <= k <= len(self.predictor.classes):
            raise ClientError(f"top_k must be between 1 and {len(self.predictor.classes)}, got {k}")
        return k

    # -- routes ---------------------------------------------------------------------------------
    def _check_key(self, request: Request) -> None:
        if not authorized(request.headers, self._api_key):
            raise ClientError("this endpoint requires an API key: send 'Authorization: Bearer KEY' (or 'X-API-Key: KEY')",
                              401, {"WWW-Authenticate": "Bearer"})

    @fastapi_app.post("/predict", response_model=PredictResponse, openapi_extra=IMAGE_BODY,
                      responses=error_responses(400, 401, 408, 413, 415, 500, 503), summary="Classify one image")
    async def predict(self, request: Request, top_k: Optional[int] = Query(None, description=TOP_K_DOC)) -> JSONResponse:
        t0, s = time.perf_counter(), self.settings
        self._check_key(request)
        deadline = time.monotonic() + s.deadline_s
        top_k = self._top_k(top_k)
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            blobs = await read_files(guarded(request, s.max_bytes + MULTIPART_OVERHEAD, s.body_timeout_s), "file", 1, s.max_bytes)
            if len(blobs) != 1:
                raise ClientError("send one image in field 'file' (use /predict/batch for several)")
        else:
            blobs = [await read_body(guarded(request, s.max_bytes, s.body_timeout_s))]
        preds, version = await self._classify(blobs, top_k, deadline)
        metrics()["images"].inc(1, tags={"route": "/predict"})
        return JSONResponse({"predictions": preds[0], "model_version": version,
                             "latency_ms": round((time.perf_counter() - t0) * 1000, 2)})

    @fastapi_app.post("/predict/batch", response_model=BatchResponse, openapi_extra=IMAGES_BODY,
                      responses=error_responses(400, 401, 408, 413, 415, 500, 503), summary="Classify several images")
    async def predict_batch(self, request: Request,
                            top_k: Optional[int] = Query(None, description=TOP_K_DOC)) -> JSONResponse:
        t0, s = time.perf_counter(), self.settings
        self._check_key(request)
        deadline = time.monotonic() + s.deadline_s
        top_k = self._top_k(top_k)
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise ClientError("send images as multipart/form-data, one part per image in field 'files'", 415)
        limit = s.max_images * (s.max_bytes + MULTIPART_OVERHEAD)
        blobs = await read_files(guarded(request, limit, s.body_timeout_s), "files", s.max_images, s.max_bytes)
        preds, version = await self._classify(blobs, top_k, deadline)
        metrics()["images"].inc(len(blobs), tags={"route": "/predict/batch"})
        return JSONResponse({"results": [{"predictions": p} for p in preds], "model_version": version,
                             "latency_ms": round((time.perf_counter() - t0) * 1000, 2)})

    @fastapi_app.get("/healthz", response_model=Health, responses=error_responses(503), summary="Ready or not")
    async def healthz(self) -> dict[str, Any]:
        return {"status": "ready"}

    def status(self) -> dict[str, Any]:
        """This replica's model and its last load error, for the launcher (through a Serve handle,
        that is through Ray and its token, never over the open HTTP port)."""
        return {"replica": self.replica_id, "pid": os.getpid(), "model_version": self.predictor.version,
                "model_ref": self.model_ref, "last_load_error": self.last_load_error, "loaded_at": self.loaded_at}

    @fastapi_app.get("/metadata", response_model=Metadata, response_model_exclude_unset=True,
                     responses=error_responses(503), summary="Classes, model version, preprocessing, limits")
    async def metadata(self, request: Request) -> dict[str, Any]:
        s = self.settings
        public = {**self.predictor.metadata(), "model_version": self._public_version(self.predictor.version),
                  "load_error": self.last_load_error is not None,
                  "limits": {"max_bytes": s.max_bytes, "max_pixels": s.max_pixels, "max_images": s.max_images,
                             "body_timeout_s": s.body_timeout_s, "max_decode_mib": s.max_decode_mib,
                             "deadline_s": s.deadline_s},
                  "batching": {"max_batch_size": s.max_batch_size, "batch_wait_timeout_s": s.batch_wait_timeout_s,
                               "images_per_pass": s.images_per_pass},
                  "top_k_default": s.top_k, "torch_threads": s.forward_workers * s.threads_per_worker,
                  "forward_workers": s.forward_workers, "threads_per_forward": s.threads_per_forward,
                  "allocator_tuned": self.allocator_tuned, "api_key_required": self._api_key is not None}
        if self._api_key is None or not authorized(request.headers, self._api_key):
            return public  # no local paths, tracking URI or error texts for an unknown caller
        return {**public, **self.status(), "settings": s.to_dict()}

    # -- Open Inference Protocol v2 (serve.oip): what KServe / Triton clients call ---------------------
    def _oip_model(self, name: str, version: Optional[str] = None) -> tuple[str, str]:
        """This replica's (model name, version) for the protocol; 404 unless ``name``/``version`` are it."""
        mine, number = oip.split_version(self._public_version(self.predictor.version), oip.DEFAULT_NAME)
        if name != mine or version not in (None, number):
            raise ClientError(f"no model {name!r}{f' version {version!r}' if version else ''} here; this server has "
                              f"{mine!r} version {number!r} (GET /v2/models/{mine})", 404)
        return mine, number

    @fastapi_app.get("/v2", response_model=ServerMetadata, tags=[oip.TAG], summary="Server metadata")
    async def oip_server(self) -> dict[str, Any]:
        return {"name": oip.DEFAULT_NAME, "version": "2", "extensions": ["binary_tensor_data"]}

    @fastapi_app.get("/v2/health/live", response_model=Live, tags=[oip.TAG], summary="Server live")
    async def oip_live(self) -> dict[str, Any]:
        return {"live": True}

    @fastapi_app.get("/v2/health/ready", response_model=Ready, tags=[oip.TAG], summary="Server ready")
    async def oip_ready(self) -> dict[str, Any]:
        return {"ready": self.predictor is not None}

    @fastapi_app.get("/v2/models/{name}", response_model=ModelMetadata, tags=[oip.TAG], summary="Model metadata",
                     responses=error_responses(404))
    async def oip_model(self, name: str = NAME) -> dict[str, Any]:
        return oip.model_metadata(*self._oip_model(name), self.settings.max_images)

    @fastapi_app.get("/v2/models/{name}/versions/{version}", response_model=ModelMetadata, tags=[oip.TAG],
                     summary="Model version metadata", responses=error_responses(404))
    async def oip_model_version(self, name: str = NAME, version: str = VERSION) -> dict[str, Any]:
        return oip.model_metadata(*self._oip_model(name, version), self.settings.max_images)

    @fastapi_app.get("/v2/models/{name}/ready", response_model=Ready, tags=[oip.TAG], summary="Model ready",
                     responses=error_responses(404))
    async def oip_model_ready(self, name: str = NAME) -> dict[str, Any]:
        self._oip_model(name)
        return {"ready": True}

    @fastapi_app.post("/v2/models/{name}/infer", response_model=InferResponse, openapi_extra=INFER_BODY, tags=[oip.TAG],
                      summary="Classify images (BYTES tensor)", responses=error_responses(400, 401, 404, 408, 413, 415, 500, 503))
    async def oip_infer(self, request: Request, name: str = NAME) -> Response:
        return await self._oip_infer(request, name, None)

    @fastapi_app.post("/v2/models/{name}/versions/{version}/infer", response_model=InferResponse, openapi_extra=INFER_BODY,
                      tags=[oip.TAG], summary="Classify images with one version",
                      responses=error_responses(400, 401, 404, 408, 413, 415, 500, 503))
    async def oip_infer_version(self, request: Request, name: str = NAME, version: str = VERSION) -> Response:
        return await self._oip_infer(request, name, version)

    async def _oip_infer(self, request: Request, name: str, version: Optional[str]) -> Response:
        s = self.settings
        self._check_key(request)
        deadline = time.monotonic() + s.deadline_s
        self._oip_model(name, version)
        limit = s.max_images * (s.max_bytes * 4 // 3 + 4096) + MULTIPART_OVERHEAD  # base64 in JSON, or raw
        body = await read_body(guarded(request, limit, s.body_timeout_s))
        req = oip.parse_infer(body, request.headers.get(oip.HEADER), s.max_images)
        for i, blob in enumerate(req.blobs):
            if len(blob) > s.max_bytes:
                raise InvalidImage(f"image {i} is {len(blob)} bytes; the limit is {s.max_bytes} bytes", 413)
        preds, used = await self._classify(req.blobs, self._top_k(req.top_k), deadline)
        metrics()["images"].inc(len(req.blobs), tags={"route": "/infer"})
        content, headers = oip.encode_infer(req, *oip.split_version(self._public_version(used), oip.DEFAULT_NAME), preds)
        return Response(content, headers=headers)

    @staticmethod
    def _public_version(version: str) -> str:
        """A version fit for anyone: a registry version as it is, a checkpoint by its folder's name only."""
        if version.startswith("checkpoint:"):
            return f"checkpoint:{Path(version[len('checkpoint:'):]).name}"
        return version


def build_app(args: Optional[dict[str, Any]] = None) -> Application:
    """Application builder: ``serve run serve.app:build_app top_k=3 ...`` and a config file's
    ``import_path`` (``args:`` there). Keys are :class:`~serve.settings.ServeSettings` fields
    (``model`` is accepted for ``model_ref``; the default model is ``$ANIMALCLF_MODEL`` or the
    champion). An MLflow ref also sends this environment's tracking URI (never credentials)."""
    s = from_environment(args)
    if s.tracking_uri is None and is_model_ref(s.model_ref):
        from animalclf.tracking import shareable_uri

        s = s.replace(tracking_uri=shareable_uri())  # the URI only (none with a password in it): secrets stay in env
    return Classifier.options(**s.deployment_options(), user_config=s.user_config()).bind(s.to_dict())
