"""animalclf.runtime.jobenv and what `make submit-*` sends to a cluster, without a cluster: the pip
section resolves with pip itself to the pinned versions, a loopback port that is not a Ray head
(an SSH tunnel) counts as a cluster, and `make -n submit-*` for a cluster address carries no path
of this machine. tests/test_multinode.py runs the pip section on a real multi-node Ray."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from probewheel import NEWEST, PINNED, PROBE, probe_project

from animalclf.errors import UserError
from animalclf.runtime.jobenv import (
    WORKING_DIR_REF,
    dashboard_url,
    head_on_this_machine,
    job_link,
    pip_runtime_env,
    submit_runtime_env,
)

ROOT = Path(__file__).resolve().parents[1]


def test_pip_section_is_pyproject_under_constraints(tmp_path):
    """The packages are pyproject.toml's dependencies, constrained by constraints.txt as the job's
    working dir holds it on the node; the file's digest is in the list (Ray's cache key), so new
    pins make a new env."""
    import tomllib

    pip = pip_runtime_env(ROOT)
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert pip["packages"][:len(deps)] == deps
    assert pip["packages"][len(deps)] == f"-c {WORKING_DIR_REF}/constraints.txt"
    assert pip["pip_check"] is False
    project, _ = probe_project(tmp_path)
    other = pip_runtime_env(project)
    assert other["packages"][-1] != pip["packages"][-1] and other["packages"][-1].startswith("# constraints.txt sha256")
    with pytest.raises(UserError, match="pyproject.toml"):
        pip_runtime_env(tmp_path / "nowhere")


def test_pip_installs_only_the_missing_package_at_its_pin(tmp_path):
    """What Ray's pip env runs, as pip runs it (``--dry-run``, ``--no-index``: nothing but the probe
    may need fetching): with the constraints, the pinned 1.0 of the one missing package and nothing
    else; without them, pip would take 2.0."""
    project, wheels = probe_project(tmp_path)
    lines = pip_runtime_env(project)["packages"]
    requirements = tmp_path / "requirements.txt"
    env = {**os.environ, "RAY_RUNTIME_ENV_CREATE_WORKING_DIR": str(project)}

    def would_install(packages: list[str]) -> str:
        requirements.write_text("\n".join([*packages, "--no-index", f"--find-links {wheels}"]) + "\n")
        r = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--disable-pip-version-check",
                            "-r", str(requirements)], env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        return next(line for line in r.stdout.splitlines() if line.startswith("Would install"))

    assert would_install(lines) == f"Would install {PROBE}-{PINNED}"
    assert would_install([line for line in lines if not line.startswith("-c")]) == f"Would install {PROBE}-{NEWEST}"


def test_a_loopback_port_that_is_not_ray_is_a_cluster():
    """``ray dashboard cluster.yaml`` listens on 127.0.0.1:8265 with ssh: not a head of this machine;
    neither is a port nobody listens on, nor another host."""
    with socket.socket() as tunnel:
        tunnel.bind(("127.0.0.1", 0))
        tunnel.listen()
        port = tunnel.getsockname()[1]
        assert not head_on_this_machine(f"http://127.0.0.1:{port}")
        assert not head_on_this_machine(f"127.0.0.1:{port}")
    assert not head_on_this_machine(f"http://localhost:{port}")
    assert not head_on_this_machine("http://192.0.2.77:8265")


def test_dashboard_link():
    assert dashboard_url("http://127.0.0.1:8265/") == "http://127.0.0.1:8265"
    assert job_link("https://ray.example.org", "animalclf-train-1") == "https://ray.example.org/#/jobs/animalclf-train-1"


def make_dry_run(*variables: str, env: dict) -> str:
    r = subprocess.run(["make", "--no-print-directory", "-n", "-f", "mk/jobs.mk", *variables, f"PY={sys.executable}"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def sent_runtime_env(dry_run: str, env: dict) -> dict:
    """The runtime env the submit line of ``dry_run`` would send (its jobenv command, run)."""
    command = re.search(r'env="\$\((.*?)\)" &&', dry_run).group(1)
    r = subprocess.run(["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_make_submit_to_a_cluster_needs_no_path_of_this_machine(tmp_path):
    """`RAY_ADDRESS=<a cluster> make submit-train DATA=s3://...`: the nodes' `python`, DATA as given,
    the job's ANIMALCLF_HOME on the head (``${HOME}`` expanded there), the pinned packages, the
    dashboard link of the address; no path of this machine (checkout, venv, ANIMALCLF_HOME) in the
    command or the runtime env."""
    local_home = tmp_path / "local-home"
    env = {**os.environ, "RAY_ADDRESS": "http://192.0.2.77:8265", "ANIMALCLF_HOME": str(local_home)}
    env.pop("RAY_API_SERVER_ADDRESS", None)
    out = make_dry_run("submit-train", "DATA=s3://bucket/animals15", "TRAIN_ARGS=--use-gpu", env=env)
    submit = next(line for line in out.splitlines() if "job submit" in line)
    assert "--address 'http://192.0.2.77:8265'" in submit
    entrypoint = submit.split(" -- ", 1)[1].split(" && ")[0]
    assert entrypoint == 'python ray_jobs/train.py --data "s3://bucket/animals15" --use-gpu'
    assert "link 'http://192.0.2.77:8265'" in submit
    runtime_env = sent_runtime_env(submit, env)
    assert runtime_env["env_vars"]["ANIMALCLF_HOME"] == "${HOME}/animalclf"
    assert runtime_env["pip"] == pip_runtime_env(ROOT)
    sent = json.dumps(runtime_env)
    for local in (str(ROOT), str(local_home), sys.executable, os.path.expanduser("~")):
        assert local not in sent and local not in entrypoint, local
    # A relative DATA is a path on the cluster: passed as given; JOB_PIP=0 sends no packages.
    out = make_dry_run("submit-tune", "DATA=data/animals15", "JOB_PIP=0", env=env)
    submit = next(line for line in out.splitlines() if "job submit" in line)
    assert 'python ray_jobs/tune.py --data "data/animals15"' in submit
    assert "pip" not in sent_runtime_env(submit, env)


def test_make_submit_to_a_head_here_keeps_this_machine(tmp_path):
    """For a head of this machine: this checkout's venv, an absolute DATA, ANIMALCLF_HOME, no pip."""
    env = {**os.environ, "ANIMALCLF_HOME": str(tmp_path)}
    env.pop("RAY_ADDRESS", None)
    out = make_dry_run("submit-train", "DATA=data/animals15", "JOB_WHERE=here", env=env)
    submit = next(line for line in out.splitlines() if "job submit" in line)
    assert "--address 'http://127.0.0.1:8265'" in submit
    assert f' -- {sys.executable} ray_jobs/train.py --data "{ROOT}/data/animals15"' in submit
    runtime_env = sent_runtime_env(submit, env)
    assert runtime_env["env_vars"]["ANIMALCLF_HOME"] == str(tmp_path) and "pip" not in runtime_env
    assert submit_runtime_env(None, False, {})["env_vars"].get("ANIMALCLF_HOME") is None


def test_submit_predict_to_a_cluster_asks_for_an_output():
    env = {**os.environ, "RAY_ADDRESS": "http://192.0.2.77:8265"}
    r = subprocess.run(["make", "--no-print-directory", "-n", "-f", "mk/jobs.mk", "submit-predict", "DATA=s3://b/p",
                        f"PY={sys.executable}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "give PREDICT_OUT=s3://" in r.stderr, r.stderr
    out = make_dry_run("submit-predict", "DATA=s3://b/p", "PREDICT_OUT=s3://b/out", env=env)
    assert '--data "s3://b/p" --out "s3://b/out"' in out
