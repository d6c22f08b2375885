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
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
SCRUB = ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "MLFLOW_TRACKING_URI",
         "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "DAGSHUB_REPO_OWNER", "DAGSHUB_REPO_NAME",
         "DAGSHUB_USER_TOKEN", "ANIMALCLF_HOME")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def test_smoke_job_succeeds_and_is_tracked(head, jobs, tiny_folder):
    from mlflow import MlflowClient

    job = f"smoke-{secrets.token_hex(3)}"
    out = jobs("submit-train", JOB_ID=job, DATA=tiny_folder,
               TRAIN_ARGS="--arch efficientnet_lite0 --smoke-test --experiment jobs-smoke --model-name jobs-smoke").stdout
    assert f"submitted {job}" in out
    status = wait_for(lambda: (s := job_status(head, job)) in TERMINAL and s, 240, "the smoke job")
    logs = jobs("job-logs", JOB=job).stdout
    assert status == "SUCCEEDED", logs[-4000:]
    r = jobs("job-status", JOB=job)
    assert f"Job '{job}' succeeded" in r.stdout + r.stderr
    assert "epoch 2/2" in logs and "train loss" in logs
    assert "Best checkpoint:" in logs

    client = MlflowClient(tracking_uri=f"sqlite:///{jobs.db}")
    exp = client.get_experiment_by_name("jobs-smoke")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "val_loss")] == [1, 2]
    assert client.search_model_versions("name='jobs-smoke'")
    assert (jobs.home / "runs" / "models" / runs[0].info.run_id / "model.pt").is_file()


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
