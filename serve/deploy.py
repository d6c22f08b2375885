"""Start, update and stop the classifier on the current Ray from Python (demo, tests, benches).

::

    from serve import deploy
    url = deploy.start("models:/animalclf@champion")      # blocks until /healthz answers
    deploy.swap_model("models:/animalclf/7")               # in place, no downtime
    deploy.stop()

    python serve/deploy.py --model models:/animalclf@champion [--host 127.0.0.1 --port 8000]

The application is deployed the way ``serve deploy serve/config.yaml`` does it (a declarative
config whose ``import_path`` is ``serve.app:build_app``), so a later change of only
``user_config`` (a new ``model_ref``, batch size, top-k) reaches the running replicas through
``reconfigure`` instead of restarting them.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import from the repo root, not from serve/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import copy
import ipaddress
import logging
import os
import time
from typing import Any, Optional

import requests

from animalclf.errors import UserError

log = logging.getLogger(__name__)

__all__ = ["start", "stop", "reconfigure", "swap_model", "APP_NAME", "get_args_parser", "main"]

APP_NAME = "animalclf"
IMPORT_PATH = "serve.app:build_app"
_STATE: dict[str, Any] = {}


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _ensure_ray() -> None:
    import ray

    if not ray.is_initialized():
        # joins a running cluster when there is one (RAY_ADDRESS / `ray start`), else starts a
        # local one; the dashboard stays on (see NOTES-ray.md)
        ray.init(logging_level="WARNING")


def _deploy(config: dict[str, Any]) -> None:
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    _get_global_client().deploy_apps(ServeDeploySchema.model_validate(config))


def _wait_healthy(url: str, timeout_s: float, want_ref: Optional[str] = None) -> dict[str, Any]:
    """Poll the app status and ``/healthz`` until the app runs (and serves ``want_ref``)."""
    from ray import serve

    deadline, last = time.monotonic() + timeout_s, "no answer yet"
    while time.monotonic() < deadline:
        st = serve.status().applications.get(APP_NAME)
        if st is not None and st.status == "DEPLOY_FAILED":
            raise UserError(f"Serve could not deploy the classifier: {st.message}")
        if st is not None and st.status == "RUNNING":
            try:
                r = requests.get(f"{url}/healthz", timeout=5)
                if r.ok:
                    h = r.json()
                    if want_ref is None or h.get("model_ref") == want_ref or (h.get("last_load_error") or "").find(want_ref) >= 0:
                        return h
                last = f"healthz {r.status_code}: {r.text[:200]}"
            except requests.RequestException as e:
                last = f"{type(e).__name__}"
        time.sleep(0.25)
    raise UserError(f"The classifier at {url} did not become healthy within {timeout_s:.0f} s ({last}); see `serve status` and the Ray logs.")


def start(model_ref: str, host: str = "127.0.0.1", port: int = 8000, *, request_timeout_s: float = 30.0,
          timeout_s: float = 180.0, **options: Any) -> str:
    """Deploy the classifier for ``model_ref`` on the current Ray (started when none) and
    return its base URL once ``/healthz`` answers.

    ``options`` are :func:`serve.app.build_app` keys: ``top_k``, ``batching``,
    ``max_batch_size``, ``batch_wait_timeout_s``, ``max_ongoing_requests``,
    ``max_queued_requests``, ``num_replicas``, ``num_cpus``, ``num_gpus``, ``max_images``,
    ``max_bytes``, ``max_pixels``, ``tracking_uri``, ``num_threads``.
    """
    from ray import serve

    if not _is_loopback(host):
        log.warning("Binding the classifier to %s: the endpoint has no authentication; put it behind a proxy that has.", host)
    if not model_ref.startswith(("models:/", "runs:/")):
        if not (Path(model_ref) / "animalclf.json").is_file():
            raise UserError(f"{model_ref!r} is neither an MLflow model URI (models:/NAME@ALIAS) nor an animalclf checkpoint directory.")
        model_ref = str(Path(model_ref).resolve())
    _ensure_ray()
    http_options = {"host": host, "port": int(port), "request_timeout_s": float(request_timeout_s)}
    serve.start(http_options=http_options)
    args = {"model": model_ref, **{k: v for k, v in options.items() if v is not None}}
    config = {
        "http_options": http_options,
        "applications": [{"name": APP_NAME, "route_prefix": "/", "import_path": IMPORT_PATH, "args": args}],
    }
    _deploy(config)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    url = f"http://{'[' + shown + ']' if ':' in shown else shown}:{int(port)}"
    _STATE.update(config=config, url=url, user_config=None)
    health = _wait_healthy(url, timeout_s)
    log.info("Classifier serving %s at %s", health.get("model_version"), url)
    return url


def reconfigure(timeout_s: float = 120.0, **user_config: Any) -> dict[str, Any]:
    """Send a new ``user_config`` (``model_ref``, ``top_k``, ``max_batch_size``,
    ``batch_wait_timeout_s``, ``max_images``) to the running replicas in place.

    Returns ``/healthz`` once a replica reports the new model (or the error loading it)."""
    if "config" not in _STATE:
        raise UserError("The classifier is not running from this process: call serve.deploy.start first.")
    config = copy.deepcopy(_STATE["config"])
    args = config["applications"][0]["args"]
    base = _STATE["user_config"] or {
        "model_ref": args["model"], "top_k": int(args.get("top_k", 5)),
        **({"max_batch_size": 1, "batch_wait_timeout_s": 0.0} if str(args.get("batching", True)).lower() in ("false", "0", "no", "off")
           else {"max_batch_size": int(args.get("max_batch_size", 16)), "batch_wait_timeout_s": float(args.get("batch_wait_timeout_s", 0.005))}),
    }
    new = {**base, **user_config}
    config["applications"][0]["deployments"] = [{"name": "Classifier", "user_config": new}]
    _deploy(config)
    _STATE["user_config"] = new
    return _wait_healthy(_STATE["url"], timeout_s, want_ref=new["model_ref"] if "model_ref" in user_config else None)


def swap_model(model_ref: str, timeout_s: float = 120.0) -> dict[str, Any]:
    """Load ``model_ref`` into the running replicas without downtime (see :func:`reconfigure`)."""
    if not model_ref.startswith(("models:/", "runs:/")):
        model_ref = str(Path(model_ref).resolve())
    return reconfigure(timeout_s=timeout_s, model_ref=model_ref)


def stop() -> None:
    """Delete the application and shut Serve down (Ray itself keeps running)."""
    from ray import serve

    try:
        serve.delete(APP_NAME)
    except Exception as e:  # already gone
        log.debug("serve.delete: %s", e)
    serve.shutdown()
    _STATE.clear()


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Serve the animal classifier over HTTP on Ray Serve.", add_help=add_help)
    p.add_argument("--model", default=os.environ.get("ANIMALCLF_MODEL", "models:/animalclf@champion"),
                   help="checkpoint directory or MLflow model URI (default: $ANIMALCLF_MODEL or models:/animalclf@champion)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind; anything but loopback exposes an endpoint without auth (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port (default: 8000)")
    p.add_argument("--top-k", type=int, default=5, help="classes returned per image unless ?top_k= (default: 5)")
    p.add_argument("--no-batching", dest="batching", action="store_false", help="run each image on its own (default: dynamic batching)")
    p.add_argument("--max-batch-size", type=int, default=16, help="images per forward pass (default: 16)")
    p.add_argument("--batch-wait-ms", type=float, default=5.0, help="wait for a batch to fill (default: 5.0)")
    p.add_argument("--max-ongoing", type=int, default=32, help="requests in flight per replica (default: 32)")
    p.add_argument("--max-queued", type=int, default=64, help="requests waiting before 503 (default: 64)")
    p.add_argument("--replicas", default=None, help="replicas: a number or 'auto' (default: 1)")
    p.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per replica (default: 1.0)")
    p.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per replica; >0 runs the model on CUDA (default: 0.0)")
    p.add_argument("--request-timeout", type=float, default=30.0, help="end-to-end HTTP timeout in s, then 408 (default: 30.0)")
    return p


def main(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        url = start(args.model, args.host, args.port, request_timeout_s=args.request_timeout, top_k=args.top_k,
                    batching=args.batching, max_batch_size=args.max_batch_size, batch_wait_timeout_s=args.batch_wait_ms / 1000,
                    max_ongoing_requests=args.max_ongoing, max_queued_requests=args.max_queued, num_replicas=args.replicas,
                    num_cpus=args.num_cpus, num_gpus=args.num_gpus)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    print(f"Classifier at {url} (POST {url}/predict, GET {url}/metadata). Ctrl-C stops it.", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("Stopping.", flush=True)
        stop()


if __name__ == "__main__":
    main(get_args_parser().parse_args())
