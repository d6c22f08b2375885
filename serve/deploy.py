"""Start, follow, update and stop the classifier on the current Ray (CLI, demo, jobs, tests, benches).

::

    from serve import deploy
    url = deploy.start("models:/animalclf@champion")   # serves the version @champion names now,
                                                       # and follows the alias every poll_s
    deploy.refresh()                                   # after a promotion: move now (any process)
    deploy.swap_model("models:/animalclf/7")           # in place, no downtime
    deploy.stop()

    python serve/deploy.py --model-ref models:/animalclf@champion [--port 8000 --poll-s 30 ...]

Every flag is a :class:`~serve.settings.ServeSettings` field (``--help`` lists them with defaults).

How Serve follows ``@champion``: the alias is resolved to one version in one place
(:func:`animalclf.models.predict.pin_version`, called by :func:`refresh`), and the application gets a new
``user_config`` naming that version (``pinned_ref``), so every replica's ``reconfigure()`` loads
the same version in place, a replica started later loads it too, and a failed load keeps the old
model. ``refresh()`` runs every ``poll_s`` seconds in the process that called :func:`start` (the CLI
keeps running), and any process (the promoting job) can call it to move at once.

The application is deployed declaratively, as ``serve deploy serve/config.yaml`` does (``import_path``
``serve.app:build_app``), through ``ServeControllerClient.deploy_apps``: the one private Ray API
left here. Ray 2.60's public ``serve.run`` gives every deployment a fresh random version, so a
``user_config`` change would restart the replicas instead of reconfiguring them in place.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import from the repo root, not from serve/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import dataclasses
import ipaddress
import logging
import threading
import time
from typing import Any, Optional
from urllib.parse import urlparse

import requests

from animalclf.errors import UserError
from animalclf.evaluate.registry import is_model_ref
from animalclf.models.checkpoint import META_FILE
from animalclf.models.predict import pin_version
from serve.settings import ServeSettings, from_environment

log = logging.getLogger(__name__)

__all__ = ["start", "refresh", "reconfigure", "swap_model", "stop", "replica_status", "warn_if_exposed", "APP_NAME", "get_args_parser", "main"]

APP_NAME = "animalclf"
IMPORT_PATH = "serve.app:build_app"
_STATE: dict[str, Any] = {}  # this process's launch: settings, url, follower thread


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def warn_if_exposed(s: ServeSettings) -> None:
    """A loud warning when the endpoint binds beyond loopback and requires no key."""
    if not _is_loopback(s.host) and s.api_key_file is None:
        log.warning("!!! Binding the classifier to %s WITHOUT an API key: anyone who reaches this address can use it. "
                    "Set ANIMALCLF_API_KEY (or ANIMALCLF_API_KEY_FILE / --api-key-file) to require one.", s.host)


def _url(s: ServeSettings) -> str:
    shown = "127.0.0.1" if s.host in ("0.0.0.0", "::") else s.host
    return f"http://{'[' + shown + ']' if ':' in shown else shown}:{s.port}"


def _ensure_ray() -> None:
    """Join the running Ray (``RAY_ADDRESS``, or your own ``ray start`` head) or start a private head,
    token auth on, the way every entry point does (:func:`animalclf.runtime.localray.init_ray`)."""
    from animalclf.runtime.localray import init_ray

    init_ray()


def _app_config(s: ServeSettings, pinned: str) -> dict[str, Any]:
    """The declarative config: ``args`` (what a change restarts replicas for) and the deployment's
    ``user_config`` (applied in place)."""
    user = s.user_config()
    args = {k: v for k, v in s.to_dict().items() if k not in user and v is not None}
    http = {"host": s.host, "port": s.port, "request_timeout_s": s.request_timeout_s}
    return {"http_options": http, "applications": [{
        "name": APP_NAME, "route_prefix": "/", "import_path": IMPORT_PATH, "args": args,
        "deployments": [{"name": "Classifier", "user_config": {**user, "pinned_ref": pinned}}]}]}


def _deploy(config: dict[str, Any]) -> None:
    from ray.serve.context import _get_global_client  # see the module docstring
    from ray.serve.schema import ServeDeploySchema

    _get_global_client().deploy_apps(ServeDeploySchema.model_validate(config))


def replica_status(timeout_s: float = 10.0) -> dict[str, Any]:
    """One replica's model, ref and last load error, asked through a Serve handle (Ray, with its
    token), not over the HTTP port that anyone may answer on."""
    from ray import serve

    from serve.app import DEPLOYMENT_NAME

    return serve.get_deployment_handle(DEPLOYMENT_NAME, APP_NAME).status.remote().result(timeout_s=timeout_s)


def _wait_healthy(url: str, timeout_s: float, want_ref: Optional[str] = None) -> dict[str, Any]:
    """Poll the app status, ``/healthz`` and a replica's status until the app runs and answers
    HTTP (and serves ``want_ref``, or reports the error loading it)."""
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
                    h = replica_status()
                    if want_ref is None or h.get("model_ref") == want_ref or want_ref in (h.get("last_load_error") or ""):
                        return h
                    last = f"a replica still serves {h.get('model_ref')}"
                else:
                    last = f"healthz {r.status_code}: {r.text[:200]}"
            except Exception as e:  # the HTTP proxy or the replica is not up yet
                last = type(e).__name__
        time.sleep(0.25)
    raise UserError(f"The classifier at {url} did not become healthy within {timeout_s:.0f} s ({last}); "
                    "see `serve status` and the Ray logs.")


def _apply(s: ServeSettings, timeout_s: float, force: bool = False) -> dict[str, Any]:
    """Resolve ``s.model_ref`` to one version and deploy it unless it already serves; returns a
    replica's status (model_version, model_ref, last_load_error)."""
    pinned = pin_version(s.model_ref) if s.model_ref.startswith("models:/") else s.model_ref
    url = _url(s)
    if not force:
        try:
            h = replica_status()
            if h.get("model_ref") == pinned:
                return h
        except Exception as e:  # not deployed (yet): deploy
            log.debug("replica status: %s", e)
    _deploy(_app_config(s, pinned))
    h = _wait_healthy(url, timeout_s, want_ref=pinned)
    if h.get("model_ref") == pinned:
        log.info("Classifier at %s serves %s (%s)", url, h.get("model_version"), s.model_ref)
    return h


def start(model_ref: Optional[str] = None, *, settings: Optional[ServeSettings] = None, follow: bool = True,
          timeout_s: float = 180.0, **overrides: Any) -> str:
    """Deploy the classifier on the current Ray (joined, or a private head started) and return its
    base URL once it answers. ``settings`` and/or ``overrides`` (ServeSettings fields: ``port``,
    ``top_k``, ``max_batch_size``, ``poll_s`` ...). With ``follow`` and an alias ref, this process
    re-resolves the alias every ``poll_s`` seconds (see :func:`refresh`). An API key in this
    environment (:mod:`serve.auth`) reaches the replicas as a file's path, never as a value."""
    from ray import serve

    from animalclf.config import runs_dir
    from serve.auth import key_file_for_replicas

    s = (settings or from_environment()).replace(**overrides, **({"model_ref": model_ref} if model_ref else {}))
    if s.api_key_file is None:
        s = s.replace(api_key_file=key_file_for_replicas(runs_dir()))
    if s.max_ongoing_requests < s.max_batch_size:
        log.warning("max_ongoing_requests (%d) < max_batch_size (%d): batches can never fill.", s.max_ongoing_requests, s.max_batch_size)
    warn_if_exposed(s)
    if not is_model_ref(s.model_ref):
        if not (Path(s.model_ref) / META_FILE).is_file():
            raise UserError(f"{s.model_ref!r} is neither an MLflow model URI (models:/NAME@ALIAS) nor an animalclf "
                            "checkpoint directory.")
        s = s.replace(model_ref=str(Path(s.model_ref).resolve()))
    elif s.tracking_uri is None:
        from animalclf.tracking import shareable_uri

        s = s.replace(tracking_uri=shareable_uri())  # the URI only (none with a password in it): secrets stay in env
    _ensure_ray()
    serve.start(http_options={"host": s.host, "port": s.port, "request_timeout_s": s.request_timeout_s})
    _stop_follower()
    _STATE.update(settings=s, url=_url(s))
    _apply(s, timeout_s, force=True)
    if follow and "@" in s.model_ref and s.model_ref.startswith("models:/") and s.poll_s > 0:
        _start_follower(s.poll_s)
    return _STATE["url"]


def _deployed_settings() -> ServeSettings:
    """The running classifier's settings as Serve itself holds them (its deployed config on the Ray
    this process is connected to), never as an HTTP answer reports them."""
    from ray.serve.context import _get_global_client  # see the module docstring
    from ray.serve.exceptions import RayServeException

    try:
        app = _get_global_client().get_serve_details()["applications"][APP_NAME]
        config = app["deployed_app_config"]
    except (KeyError, TypeError, RayServeException):  # no Serve, or no classifier on it
        raise UserError("No classifier is deployed on this Ray: start one with serve.deploy.start.") from None
    user = dict(config["deployments"][0].get("user_config") or {})
    user.pop("pinned_ref", None)
    return ServeSettings.from_dict({**(config.get("args") or {}), **user})


def refresh(url: Optional[str] = None, timeout_s: float = 120.0) -> dict[str, Any]:
    """Make a running classifier serve the version its ``model_ref`` (e.g. ``@champion``) names
    *now*, in place; returns a replica's status. Call it after moving the alias (the promoting job
    does). From another process the settings are read from Serve on the Ray this process joins
    (``url`` is only checked against them); the alias is resolved with this process's own tracking
    settings. A no-op when that version already serves."""
    _ensure_ray()
    if url is None and "settings" in _STATE:
        s = _STATE["settings"]
    else:
        s = _deployed_settings()
        if url is not None and urlparse(url).port != s.port:
            raise UserError(f"The classifier deployed on this Ray answers at {_url(s)}, not at {url}.")
    return _apply(s, timeout_s)


def reconfigure(timeout_s: float = 120.0, **user_config: Any) -> dict[str, Any]:
    """Change ``user_config`` settings (``model_ref``, ``top_k``, ``max_batch_size``, limits ...)
    of the classifier this process started, in place; returns a replica's status."""
    if "settings" not in _STATE:
        raise UserError("The classifier is not running from this process: call serve.deploy.start first.")
    wrong = sorted(set(user_config) - set(ServeSettings().user_config()))
    if wrong:
        raise UserError(f"{wrong} cannot change in place; in place: {sorted(ServeSettings().user_config())}")
    s = _STATE["settings"] = _STATE["settings"].replace(**user_config)
    return _apply(s, timeout_s, force=True)


def swap_model(model_ref: str, timeout_s: float = 120.0) -> dict[str, Any]:
    """Load ``model_ref`` into the running replicas without downtime (see :func:`reconfigure`)."""
    if not is_model_ref(model_ref):
        model_ref = str(Path(model_ref).resolve())
    return reconfigure(timeout_s=timeout_s, model_ref=model_ref)


def _start_follower(poll_s: float) -> None:
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(poll_s):
            try:
                refresh()
            except Exception as e:  # the registry or Serve is briefly unreachable: try next time
                log.warning("Following %s failed (%s); still serving the last version.", _STATE["settings"].model_ref, e)

    t = threading.Thread(target=loop, name="animalclf-follow", daemon=True)
    _STATE.update(follower=t, follower_stop=stop)
    t.start()


def _stop_follower() -> None:
    if "follower_stop" in _STATE:
        _STATE.pop("follower_stop").set()
        _STATE.pop("follower").join(timeout=30)


def stop() -> None:
    """Stop following, delete the application and shut Serve down (Ray itself keeps running)."""
    from ray import serve

    _stop_follower()
    try:
        serve.delete(APP_NAME)
    except Exception as e:  # already gone
        log.debug("serve.delete: %s", e)
    serve.shutdown()
    _STATE.clear()


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """One flag per ServeSettings field (``--top-k`` for ``top_k``), defaults and help from it."""
    p = argparse.ArgumentParser(description="Serve the animal classifier over HTTP on Ray Serve.", add_help=add_help)
    for f in dataclasses.fields(ServeSettings):
        default, text = f.default, f.metadata["help"]
        names = [f"--{f.name.replace('_', '-')}"] + (["--model"] if f.name == "model_ref" else [])
        kind = {"int": int, "float": float}.get(str(f.type).replace("Optional[", "").rstrip("]"), str)
        p.add_argument(*names, dest=f.name, type=kind, default=None,
                       help=f"{text} (default: {'$ANIMALCLF_MODEL or ' if f.name == 'model_ref' else ''}{default})")
    p.add_argument("--no-follow", dest="follow", action="store_false", help="serve the version the alias names at start and stay on it")
    return p


def main(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    given = {k: v for k, v in vars(args).items() if k != "follow" and v is not None}
    try:
        url = start(settings=from_environment(given), follow=args.follow)
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
