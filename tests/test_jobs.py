"""Job submission as users do it: a real `ray start --head` (token auth, dashboard on loopback)
started through mk/jobs.mk, jobs submitted, followed and stopped with its `make` targets.

The head gets its own --temp-dir, token file and ports, so nothing else on the machine joins it
(an in-process `ray.init()` only finds heads recorded under the default temp dir) and it joins
nothing; it is stopped by killing its own process group, never with a machine-wide `ray stop`.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests

from animalclf.runtime.localray import free_port
from animalclf.tracking import TRACKING_VARS

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
SCRUB = ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "ANIMALCLF_HOME") + TRACKING_VARS


def pids_matching(marker: str) -> list[int]:
    """Processes whose command line contains ``marker`` (from /proc; this test's own excluded)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                if marker in (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


def kill_tree(proc: subprocess.Popen, marker: str, grace: float = 20.0) -> None:
    """Stop a process group started with start_new_session, then anything still naming ``marker``."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait)
            break
        except subprocess.TimeoutExpired:
            continue
    for pid in pids_matching(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class Head:
    """A `make head-start` head on loopback with its own ports, temp dir and token."""

    def __init__(self, tmp: Path):
        self.temp_dir = Path(tempfile.mkdtemp(prefix="rayjobs-", dir="/tmp"))  # short: socket paths
        self.token_file = tmp / "ray_token"
        self.token_file.write_text(secrets.token_hex(32))
        self.port, self.dashboard_port = free_port(), free_port()
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        self.log = tmp / "head.log"
        self.proc: subprocess.Popen | None = None

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for the CLI: token auth on, RAY_ADDRESS naming this head (CLI only)."""
        env = {k: v for k, v in os.environ.items() if k not in SCRUB}
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(self.token_file), RAY_ADDRESS=self.address,
                   PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}", RAY_USAGE_STATS_ENABLED="0")
        env.update(extra)
        return env

    def start(self) -> None:
        head_args = " ".join([
            "--block", f"--temp-dir={self.temp_dir}", "--num-cpus=4", "--num-gpus=0",
            f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}", f"--metrics-export-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}", f"--node-manager-port={free_port()}",
            f"--object-manager-port={free_port()}", "--disable-usage-stats",
        ])
        self.proc = subprocess.Popen(
            make("head-start", HEAD_PORT=self.port, DASHBOARD_PORT=self.dashboard_port, HEAD_ARGS=head_args),
            cwd=ROOT, env=self.env(), stdout=self.log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            r = subprocess.run(make("job-list", RAY_JOB_ADDRESS=self.address), cwd=ROOT, env=self.env(),
                               capture_output=True, text=True)
            if r.returncode == 0:
                return
            time.sleep(2)
        raise RuntimeError(f"head did not come up:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None:
            kill_tree(self.proc, str(self.temp_dir))
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def make(target: str, **variables) -> list[str]:
    return ["make", "--no-print-directory", "-f", "mk/jobs.mk", target, f"PY={sys.executable}",
            f"RAY={VENV_BIN / 'ray'}", *(f"{k}={v}" for k, v in variables.items())]


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    h = Head(tmp_path_factory.mktemp("head"))
    try:
        h.start()
        yield h
    finally:
        h.stop()


@pytest.fixture
def jobs(head, tmp_path):
    """Run mk/jobs.mk targets against ``head`` with a per-test project dir and sqlite store."""
    home = tmp_path / "home"
    db = tmp_path / "mlflow.db"
    env = head.env(ANIMALCLF_HOME=str(home), MLFLOW_TRACKING_URI=f"sqlite:///{db}")
    common = dict(RAY_JOB_ADDRESS=head.address, JOB_PYTHON=sys.executable, JOB_ID_FILE=tmp_path / "last-job")

    def run(target: str, check: bool = True, **variables) -> subprocess.CompletedProcess:
        r = subprocess.run(make(target, **{**common, **variables}), cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=120)
        if check:
            assert r.returncode == 0, f"make {target} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
        return r

    run.env, run.db, run.home = env, db, home
    return run


def job_status(head: Head, job: str) -> str:
    """The job's status from the Jobs REST API (what `make job-status` prints, in prose)."""
    r = requests.get(f"{head.address}/api/jobs/{job}", timeout=30,
                     headers={"Authorization": f"Bearer {head.token_file.read_text().strip()}"})
    r.raise_for_status()
    return r.json()["status"]


def wait_for(predicate, timeout: float, what: str, interval: float = 3.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def test_submit_without_token_is_refused(head, tmp_path):
    """Token auth is on: no token (fresh HOME, no RAY_AUTH_*) or a wrong one cannot submit."""
    empty_home = tmp_path / "nohome"
    empty_home.mkdir()
    base = {k: v for k, v in head.env().items() if not k.startswith("RAY_AUTH")}
    cmd = [str(VENV_BIN / "ray"), "job", "submit", "--address", head.address, "--no-wait", "--", "echo", "hi"]
    for env in ({**base, "HOME": str(empty_home)},
                {**base, "HOME": str(empty_home), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "not-the-token"}):
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
        out = r.stdout + r.stderr
        assert r.returncode != 0, out
        assert any(w in out.lower() for w in ("authentication", "unauthorized", "401", "token")), out
    # ...and with the token the same call works (so the refusals above are about the token).
    r = subprocess.run(cmd[:-3] + ["--submission-id", f"echo-{secrets.token_hex(3)}", "--", "echo", "hi"],
                       env=head.env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_stop_running_job(head, jobs, tiny_folder):
    """A long job stopped while training ends STOPPED and registers no model."""
    from mlflow import MlflowClient

    job = f"long-{secrets.token_hex(3)}"
    args = ("--arch efficientnet_lite0 --image-size 64 --unfreeze 1 --batch-size 8 --epochs 200 "
            "--max-steps-per-epoch 2 --patience 0 --experiment jobs-stop --model-name jobs-stopped")
    jobs("submit-train", JOB_ID=job, DATA=tiny_folder, TRAIN_ARGS=args)
    wait_for(lambda: "epoch 1/200" in jobs("job-logs", JOB=job).stdout, 180, "the first epoch")
    assert job_status(head, job) == "RUNNING"
    jobs("job-stop", JOB=job)
    assert wait_for(lambda: (s := job_status(head, job)) in TERMINAL and s, 60, "the stop") == "STOPPED"

    logs = jobs("job-logs", JOB=job).stdout
    assert "Best checkpoint:" not in logs and "epoch 200/200" not in logs
    client = MlflowClient(tracking_uri=f"sqlite:///{jobs.db}")
    assert client.search_model_versions("name='jobs-stopped'") == []


# ------------------------------------------------------------------ the README's journeys, as a user runs them

@pytest.fixture
def user_jobs(head, tmp_path):
    """`make -f mk/jobs.mk ...` as the README writes it: no venv on PATH, no PY/RAY/JOB_PYTHON given,
    the token in ~/.ray/auth_token of the user's HOME, a relative DATA, outputs to ANIMALCLF_HOME."""
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text(head.token_file.read_text())
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if Path(p) != VENV_BIN)
    env = {k: v for k, v in os.environ.items() if k not in SCRUB and not k.startswith(("RAY_", "VIRTUAL_ENV"))}
    env.update(HOME=str(home), PATH=path, RAY_USAGE_STATS_ENABLED="0")
    project = tmp_path / "project"

    def run(target: str, check: bool = True, extra_env: dict | None = None, **variables) -> subprocess.CompletedProcess:
        cmd = ["make", "--no-print-directory", "-f", "mk/jobs.mk", target, f"RAY_JOB_ADDRESS={head.address}",
               f"JOB_ID_FILE={tmp_path / 'last-job'}", f"ANIMALCLF_HOME={project}",
               *(f"{k}={v}" for k, v in variables.items())]
        r = subprocess.run(cmd, cwd=ROOT, env={**env, **(extra_env or {})}, capture_output=True, text=True, timeout=120)
        if check:
            assert r.returncode == 0, f"make {target} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
        return r

    run.project = project
    return run


def finish(head: Head, jobs, job: str, timeout: float = 300) -> tuple[str, str]:
    status = wait_for(lambda: (s := job_status(head, job)) in TERMINAL and s, timeout, f"job {job}")
    return status, jobs("job-logs", JOB=job).stdout


def driver_lines(logs: str) -> list[str]:
    """The job driver's own lines (Ray prefixes those of actors and workers with "(Name pid=...)")."""
    return [line for line in logs.strip().splitlines() if not line.startswith(("\x1b[", "("))]


def relative_data(folder: Path) -> str:
    return os.path.relpath(folder, ROOT)


def test_job_outputs_last_in_animalclf_home_and_mlflow_ui_shows_them(head, user_jobs, tiny_folder, tmp_path):
    """The README's submit-train from a shell without the venv: the job finds our packages (the
    venv's Python), the data (a relative DATA), and writes its store, registry, checkpoints and
    reports to ANIMALCLF_HOME, never into Ray's copy of the working dir; `mlflow ui` shows them."""
    job = f"home-{secrets.token_hex(3)}"
    out = user_jobs("submit-train", JOB_ID=job, DATA=relative_data(tiny_folder),
                    TRAIN_ARGS="--arch efficientnet_lite0 --smoke-test --experiment lasting --model-name lasting").stdout
    assert f"outputs: {user_jobs.project}/runs" in out and f"submitted {job}" in out
    assert f"dashboard: {head.address}/#/jobs/{job}" in out  # the job's page, from the address used
    status, logs = finish(head, user_jobs, job)
    assert status == "SUCCEEDED", logs[-4000:]
    r = user_jobs("job-status", JOB=job)
    assert f"Job '{job}' succeeded" in r.stdout + r.stderr
    assert "epoch 2/2" in logs and "train loss" in logs and "Best checkpoint:" in logs
    runs = user_jobs.project / "runs"
    assert f"Outputs (checkpoints, reports, local MLflow store): {runs}" in logs
    assert (runs / "mlflow.db").is_file() and any((runs / "models").iterdir()) and any((runs / "reports").iterdir())
    assert any((runs / "mlartifacts" / "lasting").rglob("report.json")), "artifacts not beside the store"
    leaked = [p for p in head.temp_dir.rglob("runs") if "working_dir_files" in str(p)]
    assert not leaked, leaked

    # The README's command, pointed at the job's store, serves the run and the champion.
    port = free_port()
    ui = subprocess.Popen([str(VENV_BIN / "mlflow"), "ui", "--backend-store-uri", f"sqlite:///{runs / 'mlflow.db'}",
                           "--host", "127.0.0.1", "--port", str(port)], cwd=tmp_path, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        api = f"http://127.0.0.1:{port}/api/2.0/mlflow"

        def experiment():
            try:
                return requests.get(f"{api}/experiments/get-by-name", params={"experiment_name": "lasting"}, timeout=5).json()
            except requests.RequestException:
                return None
        exp = wait_for(experiment, 90, "mlflow ui", interval=2)["experiment"]
        found = requests.post(f"{api}/runs/search", json={"experiment_ids": [exp["experiment_id"]]}, timeout=10).json()
        assert [r["info"]["status"] for r in found["runs"]] == ["FINISHED"]
        run_id = found["runs"][0]["info"]["run_id"]
        history = requests.get(f"{api}/metrics/get-history", params={"run_id": run_id, "metric_key": "val_loss"},
                               timeout=10).json()
        assert [m["step"] for m in history["metrics"]] == [1, 2]
        # The job's log links to this run in the UI, and says how to serve that UI.
        assert f"http://127.0.0.1:5000/#/experiments/{exp['experiment_id']}/runs/{run_id}" in logs, logs[-3000:]
        assert f"ui --backend-store-uri sqlite:///{runs / 'mlflow.db'} --host 127.0.0.1 --port 5000" in logs
        assert (runs / "models" / run_id / "model.pt").is_file()
        champion = requests.get(f"{api}/registered-models/alias", params={"name": "lasting", "alias": "champion"},
                                timeout=10).json()
        assert champion["model_version"]["run_id"] == found["runs"][0]["info"]["run_id"]
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(20)


@pytest.fixture(scope="module")
def dagshub(tmp_path_factory):
    """A basic-auth MLflow server answering at DagsHub's path (/<owner>/<repo>.mlflow), with the
    owner as a user whose password is the DagsHub token."""
    from mlflow_server import Server

    s = Server(tmp_path_factory.mktemp("dagshub"), prefix="/alice/animals.mlflow")
    s.start()
    s.token = "dh-" + secrets.token_urlsafe(20)
    s.add_user("alice", s.token)
    try:
        yield s
    finally:
        s.stop()


def dagshub_env(server, token: str) -> dict[str, str]:
    return {"DAGSHUB_REPO_OWNER": "alice", "DAGSHUB_REPO_NAME": "animals", "DAGSHUB_USER_TOKEN": token,
            "DAGSHUB_CLIENT_HOST": server.host}


def files_with(root: Path, needle: str) -> list[str]:
    hits = []
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            try:
                if needle.encode() in p.read_bytes():
                    hits.append(str(p))
            except OSError:
                pass
    return hits


def dashboard_answers(head: Head) -> dict[str, str]:
    """What anyone holding the cluster token reads from the dashboard's API: jobs, actors, tasks,
    workers and runtime envs, in detail."""
    auth = {"Authorization": f"Bearer {head.token_file.read_text().strip()}"}
    out = {}
    for route in ("/api/jobs/", "/api/v0/actors?detail=1&limit=10000", "/api/v0/tasks?detail=1&limit=10000",
                  "/api/v0/workers?detail=1&limit=10000", "/api/v0/runtime_envs?detail=1&limit=10000"):
        r = requests.get(f"{head.address}{route}", headers=auth, timeout=60)
        assert r.status_code == 200, (route, r.status_code, r.text[:300])
        out[route] = r.text
    return out


def assert_secret_nowhere(secret: str, head: Head, runs: Path, client, experiment: str) -> None:
    """The secret's value in none of: the dashboard's job/actor/task/worker/runtime-env answers, the
    head's session directory, the run outputs (``runs/``), the MLflow runs' params and tags; and no
    secrets file left behind."""
    leaked = [route for route, text in dashboard_answers(head).items() if secret in text]
    assert not leaked, f"secret in the dashboard's answers: {leaked}"
    assert files_with(head.temp_dir, secret) == [], "secret in the head's session directory"
    assert files_with(runs, secret) == [], "secret in the run outputs"
    assert not list((runs / ".secrets").glob("run-*.json")), "a run's secrets file outlived it"
    exp = client.get_experiment_by_name(experiment)
    found = client.search_runs([exp.experiment_id])
    assert found
    for r in found:
        assert all(secret not in v for v in r.data.params.values()), r.info.run_id
        assert all(secret not in v for v in r.data.tags.values()), r.info.run_id


def test_train_and_tune_jobs_track_on_dagshub_with_only_its_variables(head, user_jobs, dagshub, tiny_folder):
    """Only DAGSHUB_REPO_OWNER/NAME/USER_TOKEN (+ DAGSHUB_CLIENT_HOST for the stand-in) set: the train
    run, the search's parent run, every trial's run with its per-epoch metrics, the models, the
    versions and @champion land on the server; neither job logs nor the head's logs hold the token."""
    from mlflow import MlflowClient

    env = dagshub_env(dagshub, dagshub.token)
    train, tune = f"dh-train-{secrets.token_hex(3)}", f"dh-tune-{secrets.token_hex(3)}"
    user_jobs("submit-train", extra_env=env, JOB_ID=train, DATA=relative_data(tiny_folder),
              TRAIN_ARGS="--arch efficientnet_lite0 --smoke-test --experiment dh --model-name dh-clf")
    status, train_logs = finish(head, user_jobs, train)
    assert status == "SUCCEEDED", train_logs[-4000:]
    user_jobs("submit-tune", extra_env=env, JOB_ID=tune, DATA=relative_data(tiny_folder),
              TUNE_ARGS="--arch efficientnet_lite0 --smoke-test --experiment dh --model-name dh-clf --num-samples 1 "
                        "--name dh-search")
    status, tune_logs = finish(head, user_jobs, tune, timeout=420)
    assert status == "SUCCEEDED", tune_logs[-4000:]

    os.environ.update(MLFLOW_TRACKING_USERNAME="alice", MLFLOW_TRACKING_PASSWORD=dagshub.token)
    try:
        client = MlflowClient(tracking_uri=dagshub.uri, registry_uri=dagshub.uri)
        exp = client.get_experiment_by_name("dh")
        runs = client.search_runs([exp.experiment_id])
        kinds = sorted(r.data.tags.get("animalclf.kind") for r in runs)
        assert kinds == ["train", "trial", "tune"], kinds
        assert all(r.info.status in ("FINISHED", "KILLED") for r in runs)
        parent = next(r for r in runs if r.data.tags["animalclf.kind"] == "tune")
        trials = [r for r in runs if r.data.tags["animalclf.kind"] == "trial"]
        assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in trials)
        for r in trials:
            steps = [m.step for m in client.get_metric_history(r.info.run_id, "val_accuracy")]
            assert steps and steps == list(range(1, len(steps) + 1)), steps
        versions = client.search_model_versions("name='dh-clf'")
        assert len(versions) == 2
        champion = client.get_model_version_by_alias("dh-clf", "champion")
        assert champion.version in {v.version for v in versions}
        assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"report", "search", "checkpoint"}
    finally:
        os.environ.pop("MLFLOW_TRACKING_USERNAME")
        os.environ.pop("MLFLOW_TRACKING_PASSWORD")
    for logs in (train_logs, tune_logs):
        assert dagshub.token not in logs
    os.environ.update(MLFLOW_TRACKING_USERNAME="alice", MLFLOW_TRACKING_PASSWORD=dagshub.token)
    try:
        assert_secret_nowhere(dagshub.token, head, user_jobs.project / "runs",
                              MlflowClient(tracking_uri=dagshub.uri, registry_uri=dagshub.uri), "dh")
    finally:
        os.environ.pop("MLFLOW_TRACKING_USERNAME")
        os.environ.pop("MLFLOW_TRACKING_PASSWORD")


def test_joining_a_head_with_a_password_leaves_it_nowhere(head, dagshub, tiny_folder, tmp_path):
    """train.py and tune.py run in a shell that joins the running head (RAY_ADDRESS = its GCS) with
    MLFLOW_TRACKING_USERNAME/PASSWORD for a basic-auth server: runs, trials and metrics land there,
    and the password is in no record of Ray's, no output, no param or tag (it reaches the workers
    as a private file's path, removed when the driver ends)."""
    from mlflow import MlflowClient

    project, home = tmp_path / "project", tmp_path / "home"
    home.mkdir()
    env = head.env(RAY_ADDRESS=f"127.0.0.1:{head.port}", HOME=str(home), ANIMALCLF_HOME=str(project),
                   MLFLOW_TRACKING_URI=dagshub.uri, MLFLOW_TRACKING_USERNAME=dagshub.user,
                   MLFLOW_TRACKING_PASSWORD=dagshub.password)
    common = ["--data", str(tiny_folder), "--arch", "efficientnet_lite0", "--smoke-test", "--experiment", "joined",
              "--model-name", "joined-clf"]
    for script, extra in (("train.py", []), ("tune.py", ["--num-samples", "1", "--name", "joined-search"])):
        r = subprocess.run([sys.executable, str(ROOT / "ray_jobs" / script), *common, *extra], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=400)
        assert r.returncode == 0, f"{script}: {r.stderr[-4000:]}"
        assert dagshub.password not in r.stdout + r.stderr
        assert "Local Ray head at" not in r.stderr, "started a private head instead of joining"
    client = MlflowClient(tracking_uri=dagshub.uri, registry_uri=dagshub.uri)
    os.environ.update(MLFLOW_TRACKING_USERNAME=dagshub.user, MLFLOW_TRACKING_PASSWORD=dagshub.password)
    try:
        runs = client.search_runs([client.get_experiment_by_name("joined").experiment_id])
        assert sorted(r.data.tags.get("animalclf.kind") for r in runs) == ["train", "trial", "tune"]
        trial = next(r for r in runs if r.data.tags["animalclf.kind"] == "trial")
        assert [m.step for m in client.get_metric_history(trial.info.run_id, "val_accuracy")][:1] == [1]  # from a worker
        assert_secret_nowhere(dagshub.password, head, project / "runs", client, "joined")
        jobs = requests.get(f"{head.address}/api/jobs/", timeout=30,
                            headers={"Authorization": f"Bearer {head.token_file.read_text().strip()}"}).text
        assert "ANIMALCLF_SECRETS_FILE" in jobs, "the drivers did not join this head"
    finally:
        os.environ.pop("MLFLOW_TRACKING_USERNAME")
        os.environ.pop("MLFLOW_TRACKING_PASSWORD")


def test_wrong_dagshub_token_fails_before_training(head, user_jobs, dagshub, tiny_folder):
    from mlflow import MlflowClient

    wrong = "wrong-" + secrets.token_urlsafe(12)
    job = f"dh-wrong-{secrets.token_hex(3)}"
    user_jobs("submit-train", extra_env=dagshub_env(dagshub, wrong), JOB_ID=job, DATA=relative_data(tiny_folder),
              TRAIN_ARGS="--arch efficientnet_lite0 --smoke-test --experiment dh-wrong --model-name dh-wrong")
    status, logs = finish(head, user_jobs, job)
    assert status == "FAILED"
    errors = [line for line in logs.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "rejected the credentials" in errors[0] and "DAGSHUB_USER_TOKEN" in errors[0], logs[-3000:]
    assert "Traceback" not in logs and "train loss" not in logs and wrong not in logs
    os.environ.update(MLFLOW_TRACKING_USERNAME="alice", MLFLOW_TRACKING_PASSWORD=dagshub.token)
    try:
        client = MlflowClient(tracking_uri=dagshub.uri, registry_uri=dagshub.uri)
        assert client.search_model_versions("name='dh-wrong'") == []
    finally:
        os.environ.pop("MLFLOW_TRACKING_USERNAME")
        os.environ.pop("MLFLOW_TRACKING_PASSWORD")
