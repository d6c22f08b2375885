"""Links to runs in the MLflow UI, for the lines a run prints when it starts and ends.

A tracking server (``http(s)://``, DagsHub's ``https://dagshub.com/<owner>/<repo>.mlflow`` too)
serves its UI at its own address: the link is ``<server>/#/experiments/<id>/runs/<id>``, with
any ``user:password@`` taken out. A local store (sqlite, a folder) has no UI until one is started:
the link is where ``mlflow ui`` answers by default (``http://127.0.0.1:5000``), given with the
command that serves it. :data:`UI_VAR` names another UI address (another port, a proxy).
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Mapping, Optional
from urllib.parse import urlparse, urlunparse

from animalclf.tracking.settings import UI_VAR, redact

log = logging.getLogger(__name__)

__all__ = ["UI_VAR", "DEFAULT_LOCAL_UI", "ui_base", "ui_command", "run_url", "run_link"]

DEFAULT_LOCAL_UI = "http://127.0.0.1:5000"  # what `mlflow ui` serves by default


def _is_server(tracking_uri: str) -> bool:
    return urlparse(tracking_uri).scheme in ("http", "https")


def _without_credentials(url: str) -> str:
    """``url`` without the ``user:password@`` of its address, query or fragment."""
    parts = urlparse(url)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port:
        netloc += f":{parts.port}"
    return urlunparse((parts.scheme, netloc, parts.path, "", "", ""))


def ui_base(tracking_uri: str, environ: Mapping[str, str] = os.environ) -> str:
    """Where the MLflow UI for ``tracking_uri`` answers: :data:`UI_VAR` when set, a server's own
    address (without credentials), else :data:`DEFAULT_LOCAL_UI`."""
    if environ.get(UI_VAR):
        return _without_credentials(environ[UI_VAR]).rstrip("/")
    if _is_server(tracking_uri):
        return _without_credentials(tracking_uri).rstrip("/")
    return DEFAULT_LOCAL_UI


def ui_command(tracking_uri: str, environ: Mapping[str, str] = os.environ) -> Optional[str]:
    """The command that serves a local store's UI at :func:`ui_base` (``None`` for a server)."""
    if _is_server(tracking_uri):
        return None
    base = urlparse(ui_base(tracking_uri, environ))
    mlflow_bin = Path(sys.executable).with_name("mlflow")  # this environment's mlflow (the venv's)
    exe = str(mlflow_bin) if mlflow_bin.is_file() else "mlflow"
    return (f"{shlex.quote(exe)} ui --backend-store-uri {shlex.quote(tracking_uri)} --host {base.hostname or '127.0.0.1'} "
            f"--port {base.port or (443 if base.scheme == 'https' else 80)}")


def run_url(run_id: str, experiment_id: str, tracking_uri: str, environ: Mapping[str, str] = os.environ) -> str:
    """The MLflow UI page of run ``run_id`` of experiment ``experiment_id`` (never with a secret)."""
    return redact(f"{ui_base(tracking_uri, environ)}/#/experiments/{experiment_id}/runs/{run_id}", environ)


def run_link(run_id: str, tracking_uri: Optional[str] = None, *, with_command: bool = True) -> str:
    """What a run's log line shows: its :func:`run_url` and, for a local store (and
    ``with_command``), ``(serve the UI with: <the mlflow ui command>)``. The run's experiment is
    read from the store (``tracking_uri``, default this process's); a store that cannot be read
    gives the run id alone, never an error."""
    import mlflow
    from mlflow import MlflowClient

    uri = tracking_uri or mlflow.get_tracking_uri()
    try:
        experiment_id = MlflowClient(uri).get_run(run_id).info.experiment_id
    except Exception as e:  # a link is a courtesy: it never fails a run
        log.debug("No MLflow UI link for run %s: %s", run_id, redact(str(e)))
        return f"run {run_id}"
    command = ui_command(uri) if with_command else None
    return run_url(run_id, experiment_id, uri) + (f" (serve the UI with: {redact(command)})" if command else "")
