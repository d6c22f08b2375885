"""A real MLflow tracking server with basic auth on loopback: what DagsHub's hosted MLflow is."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from animalclf.runtime.localray import free_port
from animalclf.tracking import TRACKING_VARS


class Server:
    """`mlflow server --app-name basic-auth` on loopback; with ``prefix`` (e.g. ``/alice/animals.mlflow``,
    DagsHub's layout) it answers under that path, as DagsHub's hosted MLflow does."""

    def __init__(self, root: Path, prefix: str = ""):
        self.root = root
        self.port = free_port()
        self.host = f"http://127.0.0.1:{self.port}"
        self.prefix = prefix
        self.uri = f"{self.host}{prefix}"
        self.admin_password = "adm-" + secrets.token_urlsafe(16)
        self.user, self.password = "trainer", "pw-" + secrets.token_urlsafe(18)
        self.log = root / "server.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        ini = self.root / "basic_auth.ini"
        ini.write_text(
            "[mlflow]\ndefault_permission = READ\n"
            f"database_uri = sqlite:///{self.root / 'auth.db'}\nadmin_username = admin\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            # PBKDF2 per request is slow on 2 cores; cache verified credentials for a minute.
            "auth_cache_ttl_seconds = 60\n"
        )
        env = {k: v for k, v in os.environ.items() if k not in TRACKING_VARS}
        env.update(MLFLOW_AUTH_CONFIG_PATH=str(ini), MLFLOW_AUTH_ADMIN_PASSWORD=self.admin_password,
                   MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(16))
        extra = []
        if self.prefix:  # gunicorn serves the app below SCRIPT_NAME
            env["SCRIPT_NAME"] = self.prefix
            extra = ["--gunicorn-opts", "--log-level warning"]
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "mlflow"), "server", "--app-name", "basic-auth", "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1", "--backend-store-uri", f"sqlite:///{self.root / 'backend.db'}",
             "--artifacts-destination", str(self.root / "artifacts"), *extra],
            env=env, stdout=self.log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not start:\n{self.log.read_text()[-3000:]}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.uri}/health", timeout=2).status_code in (200, 401):
                    break
            time.sleep(1)
        r = requests.post(f"{self.uri}/api/2.0/mlflow/users/create", auth=("admin", self.admin_password),
                          json={"username": self.user, "password": self.password}, timeout=60)
        r.raise_for_status()

    def add_user(self, user: str, password: str) -> None:
        r = requests.post(f"{self.uri}/api/2.0/mlflow/users/create", auth=("admin", self.admin_password),
                          json={"username": user, "password": password}, timeout=60)
        r.raise_for_status()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)

    @contextlib.contextmanager
    def client(self):
        """An MlflowClient for this server, logged in as the trainer user."""
        from mlflow import MlflowClient

        saved = {k: os.environ.get(k) for k in TRACKING_VARS}
        os.environ.update(MLFLOW_TRACKING_USERNAME=self.user, MLFLOW_TRACKING_PASSWORD=self.password)
        try:
            yield MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
