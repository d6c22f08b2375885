"""Where runs are tracked and how credentials travel (animalclf.tracking.settings): the local sqlite
default, DagsHub's variables and `dagshub login` token, an unreachable server as one line, and one
registry for tracking and models. A real MLflow server is tests/test_remote_tracking.py's."""

import json
import os
import secrets
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from animalclf.errors import UserError
from animalclf.tracking import check_tracking, redact, resolve_tracking


def test_default_is_local_sqlite(project):
    assert resolve_tracking({}) == {"MLFLOW_TRACKING_URI": f"sqlite:///{project}/runs/mlflow.db"}


def test_dagshub_variables_point_at_hosted_mlflow():
    env = {"DAGSHUB_REPO_OWNER": "me", "DAGSHUB_REPO_NAME": "animals", "DAGSHUB_USER_TOKEN": "s3cr3t-tok"}
    assert resolve_tracking(env) == {"MLFLOW_TRACKING_URI": "https://dagshub.com/me/animals.mlflow",
                                     "MLFLOW_TRACKING_USERNAME": "me", "MLFLOW_TRACKING_PASSWORD": "s3cr3t-tok"}
    with pytest.raises(UserError, match="DAGSHUB_USER_TOKEN"):
        resolve_tracking({"DAGSHUB_REPO_OWNER": "me"})
    assert redact("token=s3cr3t-tok!", env) == "token=***!"


def test_unreachable_server_fails_fast_with_one_line():
    with pytest.raises(UserError, match="unreachable") as e:
        check_tracking("http://127.0.0.1:9", timeout=2)
    assert "\n" not in str(e.value)


class _DagsHubUserAPI(BaseHTTPRequestHandler):
    """DagsHub's `GET /api/v1/user`, which the `dagshub` package asks to check a token."""

    token = ""

    def do_GET(self):
        ok = self.path == "/api/v1/user" and self.headers.get("Authorization") == f"Bearer {self.token}"
        body = json.dumps({"login": "alice", "username": "alice"} if ok else {"message": "bad token"}).encode()
        self.send_response(200 if ok else 401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_dagshub_login_token_is_found_without_dagshub_user_token(tmp_path):
    """`dagshub login --token` saves a token; with DAGSHUB_USER_TOKEN unset our jobs find it. A run
    that tracks locally never imports `dagshub` (so never calls the network)."""
    _DagsHubUserAPI.token = "login-" + secrets.token_hex(8)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _DagsHubUserAPI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host = f"http://127.0.0.1:{server.server_address[1]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSHUB_", "MLFLOW_"))}
    env.update(HOME=str(tmp_path), DAGSHUB_CLIENT_HOST=host, ANIMALCLF_HOME=str(tmp_path))
    dagshub_cli = str(Path(sys.executable).parent / "dagshub")
    try:
        r = subprocess.run([dagshub_cli, "login", "--token", _DagsHubUserAPI.token, "--host", host, "-q"], env=env,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        probe = ("import json, sys; from animalclf.errors import UserError; from animalclf.tracking import resolve_tracking\n"
                 "try: print('RESOLVED', json.dumps(resolve_tracking()), 'dagshub' in sys.modules)\n"
                 "except UserError as e: print('ERROR', e)")

        def resolved(extra: dict) -> str:
            r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, env={**env, **extra})
            return next(line for line in r.stdout.splitlines() if line.startswith(("RESOLVED", "ERROR")))

        repo = {"DAGSHUB_REPO_OWNER": "alice", "DAGSHUB_REPO_NAME": "animals"}
        line = resolved(repo)
        assert line.startswith("RESOLVED ") and line.endswith(" True"), line
        assert json.loads(line[len("RESOLVED "):-len(" True")]) == {
            "MLFLOW_TRACKING_URI": f"{host}/alice/animals.mlflow", "MLFLOW_TRACKING_USERNAME": "alice",
            "MLFLOW_TRACKING_PASSWORD": _DagsHubUserAPI.token}
        assert resolved({}).endswith(" False"), "dagshub imported on a run that tracks locally"
        # No saved token and none in the environment: one line naming both ways.
        os.remove(next(tmp_path.rglob("tokens")))
        line = resolved(repo)
        assert line.startswith("ERROR No DagsHub token") and "DAGSHUB_USER_TOKEN or run `dagshub login`" in line
    finally:
        server.shutdown()


def test_one_registry_the_tracking_servers(project, monkeypatch, caplog):
    """An inherited MLFLOW_REGISTRY_URI (what mlflow.set_registry_uri exports) would register models
    where Serve and the UI never look: configure() points the registry at the tracking store, says
    so, and drops the variable for child processes."""
    import logging

    import mlflow

    from animalclf.tracking import configure

    monkeypatch.setenv("MLFLOW_REGISTRY_URI", f"sqlite:///{project / 'elsewhere.db'}")
    with caplog.at_level(logging.WARNING, logger="animalclf.tracking"):
        uri = configure()
    assert uri == f"sqlite:///{project / 'runs' / 'mlflow.db'}"
    assert mlflow.get_registry_uri() == uri and "MLFLOW_REGISTRY_URI" not in os.environ
    assert any("MLFLOW_REGISTRY_URI is ignored" in r.getMessage() for r in caplog.records)
    assert "elsewhere" not in caplog.text  # the value is not logged (it may hold credentials)


def test_a_tracking_uri_with_a_password_travels_only_as_a_secret(project):
    """``https://user:TOKEN@host/...`` is a secret too: out of runtime envs and configs others read,
    redacted from messages, and still resolved by the run's processes from the secrets file."""
    from animalclf.tracking import (SECRETS_FILE_VAR, forget_secrets, redact, resolve_tracking, runtime_env_vars,
                                    shareable_uri)

    uri = "https://alice:tok-SECRET-42@dagshub.example/alice/animals.mlflow"
    env = runtime_env_vars({"MLFLOW_TRACKING_URI": uri, "MLFLOW_TRACKING_USERNAME": "alice"})
    assert "tok-SECRET-42" not in json.dumps(env) and "MLFLOW_TRACKING_URI" not in env
    assert resolve_tracking(env)["MLFLOW_TRACKING_URI"] == uri  # a worker gets it back from the file
    assert shareable_uri(uri) is None and shareable_uri("https://dagshub.example/a.mlflow") == "https://dagshub.example/a.mlflow"
    assert redact(f"cannot reach {uri}", {"MLFLOW_TRACKING_URI": uri}) == \
        "cannot reach https://alice:***@dagshub.example/alice/animals.mlflow"
    forget_secrets(env)
    assert not Path(env[SECRETS_FILE_VAR]).exists()
    plain = runtime_env_vars({"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"})
    assert plain == {"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"}  # nothing secret: no file at all


def test_a_local_store_is_created_whole_even_when_its_creator_is_killed_midway(tmp_path):
    """A process killed while MLflow builds a new sqlite store (seconds of migrations: Ctrl-C early
    in ``make demo``) leaves no store, or a whole one, never one MLflow cannot open; the next
    process creates it and it opens."""
    import signal
    import sqlite3
    import time

    from mlflow import MlflowClient

    db = tmp_path / "runs" / "mlflow.db"
    code = f"from pathlib import Path; from animalclf.tracking.settings import create_store_whole; create_store_whole(Path({str(db)!r}))"
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 60
    # the first file the creation writes, whatever its name (a store built in place writes mlflow.db itself)
    while not (db.parent.is_dir() and any(db.parent.iterdir())) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.5)  # among the migrations (about 2 s on this machine)
    assert proc.poll() is None, "the creation ended before it could be killed midway"
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert not db.exists(), sqlite3.connect(db).execute("select * from alembic_version").fetchall()
    left = sorted(p.name for p in db.parent.iterdir())  # the killed creator's store and journal, for the next one
    assert left and all(n.startswith(f".mlflow.db.new-{proc.pid}") for n in left), left
    from animalclf.tracking.settings import create_store_whole

    create_store_whole(db)
    assert sorted(p.name for p in db.parent.iterdir()) == ["mlflow.db"]  # the dead creator's leftover is gone
    store = f"sqlite:///{db}"
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    assert client.search_registered_models() == [] and client.search_experiments()
