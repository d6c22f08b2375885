"""Remote MLflow with basic auth (what DagsHub's hosted MLflow is): a real
`mlflow server --app-name basic-auth` on loopback, the real train job against it, credentials
only in the environment, and never written anywhere."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from animalclf.errors import UserError
from animalclf.runtime.localray import free_port
from animalclf.tracking import TRACKING_VARS, check_tracking, resolve_tracking, worker_env
from mlflow_server import Server

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "ray_jobs" / "train.py"
TRAIN_ARGS = ["--arch", "efficientnet_lite0", "--smoke-test", "--experiment", "remote", "--model-name", "remote-clf"]


# ---------------------------------------------------------------- resolve_tracking (fast)

def test_resolve_tracking_dagshub(project):
    env = {"DAGSHUB_REPO_OWNER": "alice", "DAGSHUB_REPO_NAME": "animals", "DAGSHUB_USER_TOKEN": "tok-123"}
    assert resolve_tracking(env) == {
        "MLFLOW_TRACKING_URI": "https://dagshub.com/alice/animals.mlflow",
        "MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": "tok-123",
    }
    assert resolve_tracking({**env, "DAGSHUB_USERNAME": "bob"})["MLFLOW_TRACKING_USERNAME"] == "bob"
    # An explicit MLflow URI wins over the DagsHub variables.
    explicit = {**env, "MLFLOW_TRACKING_URI": "http://mlflow:5000", "MLFLOW_TRACKING_USERNAME": "u"}
    assert resolve_tracking(explicit) == {"MLFLOW_TRACKING_URI": "http://mlflow:5000", "MLFLOW_TRACKING_USERNAME": "u"}
    with pytest.raises(UserError, match="DAGSHUB_REPO_NAME"):
        resolve_tracking({"DAGSHUB_REPO_OWNER": "alice", "DAGSHUB_USER_TOKEN": "tok-123"})
    # What Ray workers get is the same mapping, the token as a private file's path, nothing else.
    import json
    import stat

    from animalclf.tracking import SECRETS_FILE_VAR, forget_secrets, with_secrets

    sent = worker_env({**env, "UNRELATED_SECRET": "x"})
    assert "tok-123" not in json.dumps(sent)
    secrets_file = Path(sent.pop(SECRETS_FILE_VAR))
    assert sent == {k: v for k, v in resolve_tracking(env).items() if k != "MLFLOW_TRACKING_PASSWORD"}
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(secrets_file.parent.stat().st_mode) == 0o700
    assert resolve_tracking({**sent, SECRETS_FILE_VAR: str(secrets_file)}) == resolve_tracking(env)
    assert with_secrets({SECRETS_FILE_VAR: str(secrets_file)})["MLFLOW_TRACKING_PASSWORD"] == "tok-123"
    forget_secrets({SECRETS_FILE_VAR: str(secrets_file)})
    assert not secrets_file.exists()
    assert resolve_tracking({})["MLFLOW_TRACKING_URI"] == f"sqlite:///{project / 'runs' / 'mlflow.db'}"


# ---------------------------------------------------------------- a real basic-auth server

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("mlflow-server"))
    try:
        s.start()
        yield s
    finally:
        s.stop()


def run_train(data: Path, home: Path, uri: str, user: str | None, password: str | None, ray_tmp: str | None = None,
              timeout: float = 300) -> subprocess.CompletedProcess:
    """`ray_jobs/train.py` in a fresh process with its own local Ray (RAY_ADDRESS=local)."""
    env = {k: v for k, v in os.environ.items() if k not in TRACKING_VARS and not k.startswith("RAY_")}
    env.update(ANIMALCLF_HOME=str(home), RAY_ADDRESS="local", MLFLOW_TRACKING_URI=uri, RAY_USAGE_STATS_ENABLED="0")
    if user:
        env["MLFLOW_TRACKING_USERNAME"] = user
    if password:
        env["MLFLOW_TRACKING_PASSWORD"] = password
    if ray_tmp:
        env["RAY_TMPDIR"] = ray_tmp  # this run's Ray session logs land here (and nowhere shared)
    return subprocess.run([sys.executable, str(TRAIN), "--data", str(data), *TRAIN_ARGS], cwd=home, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def trained(server, tiny_folder, tmp_path_factory):
    home = tmp_path_factory.mktemp("remote-home")
    ray_tmp = tempfile.mkdtemp(prefix="rt-", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    t0 = time.monotonic()
    r = run_train(tiny_folder, home, server.uri, server.user, server.password, ray_tmp=ray_tmp)
    assert r.returncode == 0, f"train failed ({r.returncode}):\n{r.stderr[-5000:]}"
    yield r, home, Path(ray_tmp), time.monotonic() - t0
    shutil.rmtree(ray_tmp, ignore_errors=True)


def files_containing(root: Path, needle: str) -> list[str]:
    hits = []
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            with contextlib.suppress(OSError):
                if needle.encode() in p.read_bytes():
                    hits.append(str(p))
    return hits


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_run_lands_on_server(server, trained):
    r, home, _, _ = trained
    with server.client() as client:
        exp = client.get_experiment_by_name("remote")
        runs = client.search_runs([exp.experiment_id])
        assert len(runs) == 1
        run = runs[0]
        assert run.info.status == "FINISHED"
        assert run.data.params["arch"] == "efficientnet_lite0" and run.data.params["epochs"] == "2"
        assert "val_accuracy" in run.data.metrics and "best_val_accuracy" in run.data.metrics
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")] == [1, 2]
        names = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"checkpoint", "report"} <= names
        log_tail = r.stderr[-4000:]
        versions = client.search_model_versions("name='remote-clf'")
        assert [v.run_id for v in versions] == [run.info.run_id], log_tail
    # The artifacts went through the server to its artifact store, not to a local mlruns.
    assert files_containing(server.root / "artifacts", "animalclf") or any((server.root / "artifacts").rglob("model.pt"))
    assert not (home / "mlruns").exists()
    assert f"registered remote-clf version {versions[0].version}" in r.stderr, log_tail
    # A link to the run on the server's own UI, without credentials and without a local `mlflow ui`
    assert f"{server.uri}/#/experiments/{exp.experiment_id}/runs/{run.info.run_id}" in r.stderr, log_tail
    assert "--backend-store-uri" not in r.stderr


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_password_is_never_written(server, trained):
    r, home, _, _ = trained
    pw = server.password
    assert pw not in r.stdout and pw not in r.stderr, "password in the job's output"
    assert files_containing(home, pw) == [], "password in run outputs or Ray storage"
    for part in ("artifacts", "backend.db", "server.log"):
        path = server.root / part
        assert files_containing(path, pw) == [] if path.is_dir() else pw.encode() not in path.read_bytes(), part
    with server.client() as client:
        run = client.search_runs([client.get_experiment_by_name("remote").experiment_id])[0]
        assert all(pw not in v for v in run.data.params.values())
        assert all(pw not in v for v in run.data.tags.values())
        for mv in client.search_model_versions("name='remote-clf'"):
            assert pw not in str(mv)
    # The auth store keeps a hash, not the password.
    assert pw.encode() not in (server.root / "auth.db").read_bytes()


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_password_not_in_ray_session_logs(server, trained):
    _, _, ray_tmp, _ = trained
    assert files_containing(ray_tmp, server.password) == []


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_wrong_password_fails_fast(server, tiny_folder, tmp_path):
    wrong = "wrong-" + secrets.token_urlsafe(12)
    t0 = time.monotonic()
    r = run_train(tiny_folder, tmp_path, server.uri, server.user, wrong)
    elapsed = time.monotonic() - t0
    assert r.returncode == 2, r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in r.stderr
    assert "rejected the credentials" in errors[0] and "MLFLOW_TRACKING_PASSWORD" in errors[0]
    assert wrong not in r.stdout + r.stderr
    assert "Training " not in r.stderr and "Started a local Ray instance" not in r.stderr, "Ray started"
    assert elapsed < 60, f"took {elapsed:.0f}s"
    # No credentials at all: told what to set.
    r = run_train(tiny_folder, tmp_path, server.uri, None, None)
    assert r.returncode == 2 and "requires credentials" in r.stderr.splitlines()[-1]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_server_down_fails_fast(tiny_folder, tmp_path):
    r = run_train(tiny_folder, tmp_path, f"http://127.0.0.1:{free_port()}", "trainer", "some-password-123")
    assert r.returncode == 2, r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "unreachable" in errors[0] and "Traceback" not in r.stderr
    assert "some-password-123" not in r.stderr


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_credentials_file_is_honoured(server, monkeypatch, tmp_path):
    """~/.mlflow/credentials (MLflow's own file) passes the preflight without env credentials."""
    for k in TRACKING_VARS:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(UserError, match="requires credentials"):
        check_tracking(server.uri)
    (tmp_path / ".mlflow").mkdir()
    (tmp_path / ".mlflow" / "credentials").write_text(
        f"[mlflow]\nmlflow_tracking_username = {server.user}\nmlflow_tracking_password = {server.password}\n")
    check_tracking(server.uri)
