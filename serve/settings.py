"""The serving settings: one typed, self-validating object read by the deployment
(``serve.app``), its ``reconfigure()``, the launcher and its CLI (``serve.deploy``), and written
out in ``serve/config.yaml``. A default changes here and nowhere else.

Three kinds of field (``kind`` in each field's metadata):

- ``user_config``: sent to the running replicas; a change is applied in place by ``reconfigure()``
  (no restart): the model, top-k, batching, upload limits.
- ``deployment``: Serve's deployment options (replicas, queue limits, CPUs/GPUs per replica); a
  change restarts replicas (rolling, no failed request).
- ``process``: fixed for a replica's life (tracking URI, torch threads) or the launcher's own
  (HTTP address, champion polling).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field, fields
from typing import Any, Optional, Union

from animalclf.data.decode import MAX_BYTES, MAX_DECODE_BYTES, MAX_PIXELS
from animalclf.errors import UserError
from animalclf.evaluate.registry import champion_ref
from animalclf.runtime.allocator import DEFAULT_MMAP_THRESHOLD_MIB, MAX_MIB

__all__ = ["ServeSettings", "DEFAULT_MODEL"]

DEFAULT_MODEL = champion_ref("animalclf")


def _f(default: Any, kind: str, help: str) -> Any:
    return field(default=default, metadata={"kind": kind, "help": help})


@dataclass(frozen=True)
class ServeSettings:
    """Everything that shapes the classifier endpoint; ``validate()`` runs on construction."""

    model_ref: str = _f(DEFAULT_MODEL, "user_config", "checkpoint directory or MLflow model URI; an alias "
                        "(models:/NAME@champion) is followed: Serve moves when the alias does")
    top_k: int = _f(5, "user_config", "classes returned per image unless ?top_k=")
    max_batch_size: int = _f(16, "user_config", "images per dynamic batch (1 = no dynamic batching)")
    batch_wait_timeout_s: float = _f(0.005, "user_config", "how long a batch waits to fill, in s")
    images_per_pass: int = _f(4, "user_config", "on a CPU, a batch runs as forward passes of at most this many "
                              "images, side by side on the forward workers (0: one part per worker; a GPU "
                              "takes the whole batch in one pass)")
    max_images: int = _f(16, "user_config", "images per /predict/batch request (more: 413)")
    max_bytes: int = _f(MAX_BYTES, "user_config", "bytes per image (more: 413)")
    max_pixels: int = _f(MAX_PIXELS, "user_config", "pixels per image, against decompression bombs (more: 413)")
    body_timeout_s: float = _f(10.0, "user_config", "the whole request body must arrive within this (else 408)")
    max_decode_mib: int = _f(MAX_DECODE_BYTES >> 20, "user_config", "memory one image may take to decode, in MiB "
                             "(pixels x bytes per pixel at the size decoded; a JPEG is decoded at reduced size "
                             "first); more: 413")
    deadline_s: float = _f(25.0, "user_config", "work on a request stops after this many seconds (503, try again): "
                           "a request its client gave up on stops costing CPU; keep it under request_timeout_s")
    num_replicas: Union[int, str] = _f(1, "deployment", "replicas: a number or 'auto' (autoscaling)")
    max_ongoing_requests: int = _f(32, "deployment", "requests in flight per replica; keep it >= max_batch_size "
                                   "or batches never fill")
    max_queued_requests: int = _f(64, "deployment", "requests waiting before an immediate 503")
    num_cpus: float = _f(1.0, "deployment", "CPUs per replica (also torch's thread count unless num_threads)")
    num_gpus: float = _f(0.0, "deployment", "GPUs per replica; > 0 runs the model on CUDA")
    resources: Optional[dict[str, float]] = _f(None, "deployment", "custom Ray resources per replica (a JSON object), "
                                               "e.g. {\"serving\": 1}: replicas go only to nodes that have them")
    num_threads: Optional[int] = _f(None, "process", "torch threads per replica (default: its num_cpus, at least 1)")
    threads_per_forward: int = _f(1, "process", "torch threads of one forward pass; a CPU replica runs num_threads // "
                                  "threads_per_forward passes at once and splits each batch over them")
    mmap_threshold_mib: int = _f(DEFAULT_MMAP_THRESHOLD_MIB, "process", "glibc malloc: buffers under this many MiB reuse freed memory instead "
                                 "of fresh pages on every forward pass (0: glibc's adaptive default)")
    tracking_uri: Optional[str] = _f(None, "process", "MLflow tracking URI for the replicas (default: this environment's)")
    api_key_file: Optional[str] = _f(None, "process", "file holding the API key clients must send (Authorization: "
                                     "Bearer KEY, or X-API-Key); default: $ANIMALCLF_API_KEY_FILE, or "
                                     "$ANIMALCLF_API_KEY written to a file only you can read; none: no key")
    host: str = _f("127.0.0.1", "process", "address to bind; anything but loopback needs an API key (a warning without one)")
    port: int = _f(8000, "process", "HTTP port")
    request_timeout_s: float = _f(30.0, "process", "end-to-end HTTP timeout in s, then 408")
    poll_s: float = _f(30.0, "process", "how often the launcher checks where the alias points, in s (0: only on refresh())")

    def __post_init__(self) -> None:
        self.validate()

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: Optional[dict[str, Any]] = None, **overrides: Any) -> "ServeSettings":
        """From a mapping such as ``serve run serve.app:build_app top_k=3`` passes (strings are
        converted); ``model`` is accepted for ``model_ref``; unknown keys are an error."""
        raw = {**(d or {}), **overrides}
        if "model" in raw:
            raw.setdefault("model_ref", raw.pop("model"))
        names = {f.name: f for f in fields(cls)}
        unknown = sorted(set(raw) - set(names))
        if unknown:
            raise UserError(f"unknown serving setting(s) {unknown}; valid: {sorted(names)}")
        return cls(**{k: _convert(names[k], v) for k, v in raw.items() if v is not None})

    def replace(self, **changes: Any) -> "ServeSettings":
        return dataclasses.replace(self, **changes)

    def validate(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise UserError(f"invalid serving setting: {what}")

        need(bool(self.model_ref), "model_ref is empty: pass a checkpoint directory or models:/NAME@ALIAS")
        need(self.top_k >= 1, f"top_k must be >= 1, got {self.top_k}")
        need(self.max_batch_size >= 1, f"max_batch_size must be >= 1, got {self.max_batch_size}")
        need(self.batch_wait_timeout_s >= 0, f"batch_wait_timeout_s must be >= 0, got {self.batch_wait_timeout_s}")
        need(self.max_images >= 1, f"max_images must be >= 1, got {self.max_images}")
        need(self.max_bytes >= 1 and self.max_pixels >= 1, "max_bytes and max_pixels must be >= 1")
        need(self.body_timeout_s > 0, f"body_timeout_s must be > 0, got {self.body_timeout_s}")
        need(self.max_decode_mib >= 1, f"max_decode_mib must be >= 1, got {self.max_decode_mib}")
        need(self.deadline_s > 0, f"deadline_s must be > 0, got {self.deadline_s}")
        need(self.num_replicas == "auto" or (isinstance(self.num_replicas, int) and self.num_replicas >= 1),
             f"num_replicas must be a number >= 1 or 'auto', got {self.num_replicas!r}")
        need(self.max_ongoing_requests >= 1, f"max_ongoing_requests must be >= 1, got {self.max_ongoing_requests}")
        need(self.max_queued_requests >= -1, "max_queued_requests must be >= 0 (or -1: unbounded)")
        need(self.num_cpus > 0 and self.num_gpus >= 0, "num_cpus must be > 0 and num_gpus >= 0")
        need(self.resources is None or (isinstance(self.resources, dict) and not {"CPU", "GPU"} & set(self.resources)
                                        and all(isinstance(v, (int, float)) and v >= 0 for v in self.resources.values())),
             f"resources must be a JSON object of custom resource amounts (CPU/GPU: num_cpus/num_gpus), got {self.resources!r}")
        need(self.num_threads is None or self.num_threads >= 1, f"num_threads must be >= 1, got {self.num_threads}")
        need(1 <= self.threads_per_forward <= self.threads and self.threads % self.threads_per_forward == 0,
             f"threads_per_forward must divide num_threads ({self.threads}) so no CPU idles, got {self.threads_per_forward}")
        need(self.images_per_pass >= 0, f"images_per_pass must be >= 0 (0: no limit), got {self.images_per_pass}")
        need(0 <= self.mmap_threshold_mib <= MAX_MIB, f"mmap_threshold_mib must be 0-{MAX_MIB}, got {self.mmap_threshold_mib}")
        need(0 < self.port < 65536, f"port must be 1-65535, got {self.port}")
        need(self.request_timeout_s > 0 and self.poll_s >= 0, "request_timeout_s must be > 0 and poll_s >= 0")

    # -- views --------------------------------------------------------------------------------
    def _of(self, kind: str) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.metadata["kind"] == kind}

    def user_config(self) -> dict[str, Any]:
        """What ``reconfigure()`` receives (in place, no restart)."""
        return self._of("user_config")

    def deployment_options(self) -> dict[str, Any]:
        """Options for ``Classifier.options(...)``."""
        d = self._of("deployment")
        opts: dict[str, Any] = {
            "max_ongoing_requests": d["max_ongoing_requests"], "max_queued_requests": d["max_queued_requests"],
            "ray_actor_options": {"num_cpus": d["num_cpus"], "num_gpus": d["num_gpus"],
                                  **({"resources": dict(d["resources"])} if d["resources"] else {})},
        }
        if self.num_replicas == "auto":
            opts["num_replicas"] = "auto"
        else:
            opts["num_replicas"] = int(self.num_replicas)
        return opts

    @property
    def device(self) -> str:
        return "cuda" if self.num_gpus > 0 else "cpu"

    @property
    def threads(self) -> int:
        """torch threads for a replica: ``num_threads`` or the CPUs it was given."""
        return self.num_threads or max(1, int(self.num_cpus))

    @property
    def threads_per_worker(self) -> int:
        """torch threads of each forward worker: ``threads_per_forward`` on a CPU; on a GPU (one
        worker) all of ``threads``, for the preprocessing it still does on the CPU."""
        return self.threads if self.device == "cuda" else self.threads_per_forward

    @property
    def forward_workers(self) -> int:
        """Forward passes a replica runs at once: one on a GPU, else ``threads // threads_per_forward``."""
        return 1 if self.device == "cuda" else max(1, self.threads // self.threads_per_forward)

    def forward_parts(self, n: int) -> int:
        """Forward passes a batch of ``n`` images runs as: one per forward worker, and on a CPU more,
        so that none takes over ``images_per_pass`` (a Lite0 pass over 8 images costs a third more
        per image than two over 4 on one thread each: bench/RESULTS.md); never more than ``n``."""
        workers = parts = self.forward_workers
        if self.device != "cuda" and self.images_per_pass:  # a multiple of the workers, so each gets as much
            parts = workers * -(-n // (workers * self.images_per_pass))
        return max(1, min(parts, n))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def help(cls) -> dict[str, tuple[Any, str]]:
        """name -> (default, help): for the CLI and the docs."""
        return {f.name: (f.default, f.metadata["help"]) for f in fields(cls)}


def _convert(f: dataclasses.Field, v: Any) -> Any:
    """Strings from ``serve run key=value`` or YAML to the field's type."""
    if not isinstance(v, str):
        return v
    t = str(f.type)
    try:
        if f.name == "resources":
            return json.loads(v)
        if f.name == "num_replicas":
            return v if v == "auto" else int(v)
        if t.startswith("Optional[int]") or t == "int":
            return int(v)
        if t == "float":
            return float(v)
    except ValueError:
        what = "a JSON object" if f.name == "resources" else "a number"
        raise UserError(f"invalid serving setting: {f.name} must be {what}, got {v!r}") from None
    return v


def from_environment(d: Optional[dict[str, Any]] = None) -> ServeSettings:
    """Settings from ``d``, the model defaulting to ``$ANIMALCLF_MODEL`` (else the champion)."""
    d = dict(d or {})
    if not (d.get("model_ref") or d.get("model")) and os.environ.get("ANIMALCLF_MODEL"):
        d["model_ref"] = os.environ["ANIMALCLF_MODEL"]
    return ServeSettings.from_dict(d)
