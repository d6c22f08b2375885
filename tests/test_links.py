"""Links to runs in the MLflow UI (animalclf.tracking.links): a server's own address without its
credentials (DagsHub's layout too), a local store's `mlflow ui` address with the command that serves
it, another UI address by ANIMALCLF_MLFLOW_UI, and a real store's run."""

from __future__ import annotations

import shlex
import subprocess

import pytest

from animalclf.tracking import UI_VAR, run_link, run_url, ui_command


@pytest.mark.parametrize("uri, base", [
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    ("https://mlflow.example.org/", "https://mlflow.example.org"),
    ("https://dagshub.com/alice/animals.mlflow", "https://dagshub.com/alice/animals.mlflow"),
    ("https://alice:tok-SECRET@dagshub.com/alice/animals.mlflow", "https://dagshub.com/alice/animals.mlflow"),
    ("http://bob:pw-SECRET@10.0.0.5:8080/mlflow?x=1", "http://10.0.0.5:8080/mlflow"),
])
def test_a_server_link_is_its_own_address_without_credentials(uri, base):
    url = run_url("abc123", "7", uri, environ={})
    assert url == f"{base}/#/experiments/7/runs/abc123"
    assert "SECRET" not in url and ui_command(uri, environ={}) is None


def test_a_secret_in_the_environment_never_shows_in_a_link():
    env = {"MLFLOW_TRACKING_PASSWORD": "tok-SECRET", UI_VAR: "http://user:tok-SECRET@proxy:8443/ui/"}
    url = run_url("r1", "0", "https://dagshub.com/alice/animals.mlflow", environ=env)
    assert url == "http://proxy:8443/ui/#/experiments/0/runs/r1"


@pytest.mark.parametrize("uri", ["sqlite:////tmp/project/runs/mlflow.db", "file:///tmp/mlruns", "/tmp/mlruns"])
def test_a_local_store_links_to_mlflow_ui_and_says_how_to_start_it(uri):
    assert run_url("r2", "3", uri, environ={}) == "http://127.0.0.1:5000/#/experiments/3/runs/r2"
    args = shlex.split(ui_command(uri, environ={}))
    assert args[0].endswith("mlflow") and args[1:] == ["ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
                                                        "--port", "5000"]
    other = {UI_VAR: "http://127.0.0.1:5050/"}
    assert run_url("r2", "3", uri, environ=other) == "http://127.0.0.1:5050/#/experiments/3/runs/r2"
    assert shlex.split(ui_command(uri, environ=other))[-1] == "5050"


def test_a_real_runs_link_names_its_experiment_and_the_command_serves_that_store(store, monkeypatch):
    from animalclf.tracking import Tracker

    monkeypatch.delenv(UI_VAR, raising=False)
    run = Tracker.start("links", "a-run")
    experiment_id = store.get_run(run.run_id).info.experiment_id
    uri = store.tracking_uri
    link = run_link(run.run_id)
    assert link.startswith(f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs/{run.run_id} (serve the UI with: ")
    assert link.endswith(f"--backend-store-uri {uri} --host 127.0.0.1 --port 5000)")
    assert run_link(run.run_id, with_command=False) == f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs/{run.run_id}"
    help_text = subprocess.run([shlex.split(ui_command(uri))[0], "ui", "--help"], capture_output=True, text=True)
    assert help_text.returncode == 0 and "--backend-store-uri" in help_text.stdout  # the command this mlflow has
    assert run_link("0" * 32) == f"run {'0' * 32}"  # no such run: the id alone, no error
