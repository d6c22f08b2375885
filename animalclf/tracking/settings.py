"""MLflow tracking: where runs go, a preflight check, and what a run records.

Where: ``MLFLOW_TRACKING_URI`` when set (with ``MLFLOW_TRACKING_USERNAME``/``PASSWORD`` for a
server with basic auth); DagsHub's hosted MLflow when ``DAGSHUB_REPO_OWNER``,
``DAGSHUB_REPO_NAME`` and ``DAGSHUB_USER_TOKEN`` are set; otherwise a local sqlite store at
``<project>/runs/mlflow.db``. Credentials live only in environment variables: never in params,
tags, artifacts or logs.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Optional
from urllib.parse import urlparse

import requests

from animalclf.config import runs_dir
from animalclf.errors import UserError

log = logging.getLogger(__name__)

__all__ = [
    "resolve_tracking", "configure", "worker_env", "check_tracking", "redact", "with_secrets", "SECRETS_FILE_VAR",
    "shareable_uri", "uri_password", "create_store_whole",
    "SECRET_VARS",
    "job_runtime_env", "runtime_env_vars", "forget_secrets", "TRACKING_VARS", "dagshub_login_token", "artifact_location",
]

SECRET_VARS = ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "DAGSHUB_USER_TOKEN")
CREDENTIAL_VARS = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
# MLflow reads it (mlflow.set_registry_uri exports it to child processes) to register models in
# another store than the tracking server; animalclf keeps one registry, the tracking server's,
# where Serve and the UI look: configure() overrides it with a warning.
REGISTRY_VAR = "MLFLOW_REGISTRY_URI"
# DAGSHUB_CLIENT_HOST is the variable the `dagshub` package itself reads for the DagsHub base URL.
DAGSHUB_VARS = ("DAGSHUB_REPO_OWNER", "DAGSHUB_REPO_NAME", "DAGSHUB_USER_TOKEN", "DAGSHUB_USERNAME", "DAGSHUB_CLIENT_HOST")
# Every variable that decides where runs go and how to authenticate: what tests scrub and jobs carry.
TRACKING_VARS = CREDENTIAL_VARS + DAGSHUB_VARS + (REGISTRY_VAR,)
DAGSHUB_HOST = "https://dagshub.com"
# A job's secrets travel as a file path, not as values in its runtime env (see job_runtime_env).
SECRETS_FILE_VAR = "ANIMALCLF_SECRETS_FILE"
# The MLflow UI's address when it is not the tracking URI's own (animalclf.tracking.links).
UI_VAR = "ANIMALCLF_MLFLOW_UI"


def dagshub_login_token(host: str) -> Optional[str]:
    """The token ``dagshub login`` saved for ``host`` (the `dagshub` package checks it with the host),
    or ``None`` when there is none. Only called when DagsHub tracking is asked for."""
    from dagshub.auth import get_token

    try:
        return get_token(host=host, fail_if_no_token=True)
    except RuntimeError:
        return None


def resolve_tracking(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The MLflow variables this environment means: URI plus credentials, if any."""
    environ = with_secrets(environ)
    owner, repo, token = (environ.get(k) for k in ("DAGSHUB_REPO_OWNER", "DAGSHUB_REPO_NAME", "DAGSHUB_USER_TOKEN"))
    if any((owner, repo, token)) and not environ.get("MLFLOW_TRACKING_URI"):
        if not (owner and repo):
            raise UserError("DagsHub tracking needs DAGSHUB_REPO_OWNER and DAGSHUB_REPO_NAME set (and DAGSHUB_USER_TOKEN, "
                            "or a token saved by `dagshub login`).")
        host = environ.get("DAGSHUB_CLIENT_HOST", DAGSHUB_HOST).rstrip("/")
        token = token or dagshub_login_token(host)
        if not token:
            raise UserError(f"No DagsHub token for {host}: set DAGSHUB_USER_TOKEN or run `dagshub login`.")
        return {
            "MLFLOW_TRACKING_URI": f"{host}/{owner}/{repo}.mlflow",
            "MLFLOW_TRACKING_USERNAME": environ.get("DAGSHUB_USERNAME", owner),
            "MLFLOW_TRACKING_PASSWORD": token,
        }
    if environ.get("MLFLOW_TRACKING_URI"):
        return {k: environ[k] for k in CREDENTIAL_VARS if environ.get(k)}
    db = runs_dir() / "mlflow.db"
    return {"MLFLOW_TRACKING_URI": f"sqlite:///{db}"}


def artifact_location(experiment: str) -> Optional[str]:
    """Beside a local sqlite store, artifacts go to ``mlartifacts/<experiment>`` next to the database
    (MLflow's default, ``./mlruns`` of the current directory, is a job's temporary copy under Ray);
    a server chooses its own (``None``)."""
    import mlflow

    uri = mlflow.get_tracking_uri()
    if not uri.startswith("sqlite:///"):
        return None
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in experiment)
    return (Path(uri[len("sqlite:///"):]).resolve().parent / "mlartifacts" / safe).as_uri()


def job_runtime_env(environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """The runtime env `ray job submit` gets (mk/jobs.mk): the tracking variables set here, where
    outputs go, and excludes for the working-dir upload. Secret values never travel in it (Ray
    shows a job's ``env_vars`` to every holder of the cluster token and its agents log them): see
    :func:`runtime_env_vars`."""
    keys = ("ANIMALCLF_HOME", "ANIMALCLF_LOG_LEVEL", UI_VAR) + TRACKING_VARS
    env = runtime_env_vars({k: environ[k] for k in keys if environ.get(k)})
    # A driver that also passes ray.init(runtime_env=...) (your own code) may override the job's env.
    env["RAY_OVERRIDE_JOB_RUNTIME_ENV"] = "1"
    return {"env_vars": env, "excludes": [".git", ".venv", "runs", "mlruns", "mlartifacts", "*.db"]}


def runtime_env_vars(variables: Mapping[str, str]) -> dict[str, str]:
    """``variables`` made fit for a Ray runtime env: the secret ones (:data:`SECRET_VARS`) go to a
    file only you can read, ``runs/.secrets/<random>.json`` (mode 600, in a mode-700 folder), and
    only its path travels (:data:`SECRETS_FILE_VAR`); every process of the run reads them from
    there (:func:`with_secrets`). The run's driver removes the file when it ends
    (:func:`forget_secrets`); one left by a run that never started is removed a day later."""
    secret = _secret_keys(variables)
    env = {k: v for k, v in variables.items() if v and k not in secret}
    secrets = {k: variables[k] for k in secret if variables.get(k)}
    if secrets:
        env[SECRETS_FILE_VAR] = str(_write_secrets(secrets))
    return env


def _secrets_dir() -> Path:
    return runs_dir() / ".secrets"


def _write_secrets(secrets: Mapping[str, str], stale_after_s: float = 86400.0) -> Path:
    import time

    folder = _secrets_dir()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    folder.chmod(0o700)
    for old in folder.glob("*.json"):  # left by a job that never started its driver
        try:
            if time.time() - old.stat().st_mtime > stale_after_s:
                old.unlink()
        except OSError:
            pass
    path = folder / f"run-{os.urandom(8).hex()}.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(dict(secrets), f)
    return path


def forget_secrets(environ: Mapping[str, str] = os.environ) -> None:
    """Remove the secrets file :data:`SECRETS_FILE_VAR` names, when it is one of ours
    (:func:`runtime_env_vars`); called by a run's driver when it ends, however it ends."""
    path = environ.get(SECRETS_FILE_VAR)
    if not path:
        return
    p = Path(path)
    if p.parent.name == ".secrets" and p.name.startswith("run-") and p.suffix == ".json":
        try:
            p.unlink()
            log.debug("Removed the run's secrets file %s", p)
        except FileNotFoundError:
            pass


def with_secrets(environ: Mapping[str, str]) -> Mapping[str, str]:
    """``environ`` plus the secrets of the file :data:`SECRETS_FILE_VAR` names (a job's), where unset."""
    path = environ.get(SECRETS_FILE_VAR)
    if not path:
        return environ
    try:
        secrets = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{SECRETS_FILE_VAR}={path} cannot be read ({type(e).__name__}): on a cluster, ANIMALCLF_HOME "
                        f"must be on storage every node shares, or use ~/.mlflow/credentials on the nodes.") from None
    return {**{k: v for k, v in secrets.items() if k in SECRET_VARS + ("MLFLOW_TRACKING_URI",)}, **environ}


def uri_password(uri: Optional[str]) -> Optional[str]:
    """The password a tracking URI carries in its user info (``https://user:TOKEN@host/...``), if any."""
    try:
        return urlparse(uri or "").password
    except ValueError:
        return None


def _secret_keys(variables: Mapping[str, str]) -> tuple[str, ...]:
    """The variables of ``variables`` that are secret: :data:`SECRET_VARS`, and the tracking URI
    when it carries a password."""
    return SECRET_VARS + (("MLFLOW_TRACKING_URI",) if uri_password(variables.get("MLFLOW_TRACKING_URI")) else ())


def shareable_uri(uri: Optional[str] = None) -> Optional[str]:
    """``uri`` (default: this environment's tracking URI) for what others can read (Serve's config,
    a trainer's or a trial's config): ``None`` when it carries a password, so the processes that
    receive it take it from their own environment (or the run's secrets file) instead."""
    uri = uri or resolve_tracking()["MLFLOW_TRACKING_URI"]
    if uri_password(uri):
        log.warning("MLFLOW_TRACKING_URI carries a password: it is not passed on in configs, only through the "
                    "environment; prefer MLFLOW_TRACKING_USERNAME/PASSWORD.")
        return None
    return uri


def create_store_whole(db: Path) -> None:
    """Create a new local sqlite store, if there is none, whole: MLflow builds one with some seventy
    migrations over seconds, and a process stopped among them (Ctrl-C early in ``make demo``) left
    a store that MLflow could no longer open. Built under a temporary name beside it, then linked
    into place unless another process got there first. What a killed creator left under its
    temporary name goes when its process is gone."""
    if db.exists():
        return
    import psutil
    from mlflow import MlflowClient

    db.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{db.name}.new-"
    for old in db.parent.glob(prefix + "*"):  # the store and sqlite's "-journal" beside it
        pid = old.name[len(prefix):].split("-")[0]
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            old.unlink(missing_ok=True)
    tmp = db.with_name(f"{prefix}{os.getpid()}")
    leftovers = (tmp, tmp.with_name(tmp.name + "-journal"))
    for f in leftovers:
        f.unlink(missing_ok=True)
    try:
        MlflowClient(tracking_uri=f"sqlite:///{tmp}", registry_uri=f"sqlite:///{tmp}").search_registered_models()
        try:
            os.link(tmp, db)  # never replaces a store another process finished meanwhile
        except FileExistsError:
            pass
    finally:
        for f in leftovers:
            f.unlink(missing_ok=True)


def configure(environ: Mapping[str, str] = os.environ, uri: Optional[str] = None) -> str:
    """Point this process's MLflow at :func:`resolve_tracking`'s store (or at ``uri``, the driver's
    choice, with credentials still from the environment); return the URI."""
    import mlflow

    env = resolve_tracking(environ)
    if uri:
        env["MLFLOW_TRACKING_URI"] = uri
    os.environ.update(env)
    uri = env["MLFLOW_TRACKING_URI"]
    if uri.startswith("sqlite:///"):
        create_store_whole(Path(uri[len("sqlite:///"):]))
    if environ.get(REGISTRY_VAR) not in (None, "", uri):
        log.warning("%s is ignored: models are registered on the tracking server, where Serve and the UI look for "
                    "them.", REGISTRY_VAR)
    os.environ.pop(REGISTRY_VAR, None)  # child processes follow the tracking URI too
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri("")  # "": the registry follows the tracking URI, whatever the environment says
    return uri


def worker_env(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """Variables Ray workers need to log to the same store, for a runtime env: the resolved tracking
    settings (a DagsHub token found by ``dagshub login`` included), secrets as a file's path
    (:func:`runtime_env_vars`), never as values."""
    return runtime_env_vars(resolve_tracking(environ))


def redact(text: str, environ: Mapping[str, str] = os.environ) -> str:
    """``text`` with every secret value replaced by ``***``."""
    try:
        environ = with_secrets(environ)
    except UserError:
        pass
    for v in [environ.get(k) for k in SECRET_VARS] + [uri_password(environ.get("MLFLOW_TRACKING_URI"))]:
        if v:
            text = text.replace(v, "***")
    return text


def check_tracking(uri: str, timeout: float = 10.0) -> None:
    """Fail fast, before training, when the tracking store cannot be used."""
    scheme = urlparse(uri).scheme
    if scheme in ("http", "https"):
        from mlflow.utils.credentials import read_mlflow_creds

        # What MLflow itself will send: the environment first, then ~/.mlflow/credentials (the way
        # to give cluster nodes a password without putting it in a runtime env).
        user, pwd = read_mlflow_creds()
        token = os.environ.get("MLFLOW_TRACKING_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            r = requests.get(
                f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/search", params={"max_results": 1},
                auth=(user, pwd or "") if user else None, headers=headers, timeout=timeout,
            )
        except requests.RequestException as e:
            raise UserError(
                f"MLflow tracking server {uri} is unreachable ({type(e).__name__}): start it, fix "
                f"MLFLOW_TRACKING_URI, or unset it to use the local store."
            ) from None
        if r.status_code in (401, 403) and not (user or token):
            raise UserError(
                f"MLflow tracking server {uri} requires credentials (HTTP {r.status_code}): set "
                f"MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD (or DAGSHUB_USER_TOKEN)."
            )
        if r.status_code in (401, 403):
            raise UserError(
                f"MLflow tracking server {uri} rejected the credentials (HTTP {r.status_code}): check "
                f"MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD (or DAGSHUB_USER_TOKEN)."
            )
        if r.status_code >= 400:
            raise UserError(f"MLflow tracking server {uri} answered HTTP {r.status_code}: is it an MLflow server?")
    elif scheme == "sqlite":
        db = Path(uri[len("sqlite:///"):])
        if not os.access(db.parent if db.parent.exists() else db.parent.parent, os.W_OK):
            raise UserError(f"MLflow store {db} is not writable: fix permissions or set MLFLOW_TRACKING_URI.")
    elif scheme in ("", "file"):
        pass
    else:
        log.info("Not preflighting tracking URI scheme %r", scheme)
