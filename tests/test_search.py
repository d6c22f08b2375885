"""Ray Tune + Optuna + ASHA over the real Ray Train job, with MLflow lineage and @champion."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from animalclf.config import TrainConfig
from animalclf.errors import UserError
from animalclf.models.predict import Predictor
from animalclf.tune.space import default_space, parse_space
from animalclf.tune.search import TuneOptions, plan_concurrency, run_search
from animalclf.tune.study import STUDY_FIGURES

ROOT = Path(__file__).resolve().parents[1]


def tiny_cfg(data, **kw):
    base = dict(data=str(data), arch="efficientnet_lite0", image_size=64, batch_size=8, epochs=3, patience=0,
                model_name="tiny-tuned", experiment="tune-test", unfreeze=0)
    return TrainConfig(**{**base, **kw})


@pytest.mark.slow
def test_search_stops_a_bad_trial_tracks_lineage_and_promotes_champion(ray_session, project, tiny_folder):
    cfg = tiny_cfg(tiny_folder)
    space = parse_space(["lr=1e-3:1e-2", "unfreeze=0:1"], arch=cfg.arch)
    points = [{"lr": 5e-3, "unfreeze": 0}, {"lr": 8e-3, "unfreeze": 1}, {"lr": 80.0, "unfreeze": 1}]  # the last is absurd
    opts = TuneOptions(name="t4", num_samples=4, max_concurrent=2, grace_period=1, reduction_factor=2, points=points)
    out = run_search(cfg, space, opts)

    assert len(out.trials) == 4
    by_lr = {t["config"]["lr"]: t for t in out.trials}
    assert by_lr[80.0]["status"] == "STOPPED_BY_ASHA" and by_lr[80.0]["epochs"] < 3
    assert out.epochs_run < out.epochs_budget == 12
    scores = [t["best"]["val_accuracy"] for t in out.trials if t["best"]]
    assert out.best_metrics["val_accuracy"] == max(scores)
    assert out.best_config["lr"] != 80.0

    client = MlflowClient()
    parent = client.get_run(out.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.params["space.lr"] == "loguniform[0.001, 0.01]"
    exp = parent.info.experiment_id
    children = client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{out.parent_run_id}'")
    assert len(children) == 4
    statuses = {c.data.tags["animalclf.trial_status"]: c.info.status for c in children}
    assert statuses["STOPPED_BY_ASHA"] == "KILLED"
    assert all(len(client.get_metric_history(c.info.run_id, "val_accuracy")) >= 1 for c in children)
    arts = {a.path for a in client.list_artifacts(out.parent_run_id, "search")}
    assert {f"search/{f}" for f in ("trials.json", "search.html", "optuna.db", "parallel_coordinates.json",
                                    "trial_curves.json", *(f"{n}.json" for n in STUDY_FIGURES))} <= arts, arts

    # The Optuna study outlives the driver: kept beside the search's outputs, one Optuna trial per Tune trial.
    kept = Path(out.report_dir) / "search"
    study = optuna.load_study(study_name="t4", storage=f"sqlite:///{kept / 'optuna.db'}")
    assert len(study.trials) == len(out.trials) == 4
    assert sorted(t.params["lr"] for t in study.trials)[-1] == 80.0  # the points went through the kept study
    page = (kept / "search.html").read_text()
    assert page.count("* plotly.js v") == 1 and not re.search(r"<script[^>]*\bsrc\s*=", page)  # works offline
    assert all(f'id="{n}"' in page for n in STUDY_FIGURES)
    assert any(a.path == "report/report.json" for a in client.list_artifacts(out.parent_run_id, "report"))

    champion = client.get_model_version_by_alias("tiny-tuned", "champion")
    assert out.promoted and str(champion.version) == out.model_version and champion.run_id == out.parent_run_id
    model = Predictor.load("models:/tiny-tuned@champion")
    assert model.classes == ["Blue", "Green", "Red"] and model.version == f"tiny-tuned/{champion.version}"


def test_space_and_concurrency_errors_before_any_trial():
    with pytest.raises(UserError, match="empty or inverted"):
        parse_space(["lr=1e-2:1e-4"])
    with pytest.raises(UserError, match="empty or inverted"):
        parse_space(["label_smoothing=0.1:0.1"])
    with pytest.raises(UserError, match="Unknown search parameter 'momentum'"):
        parse_space(["momentum=0.1:0.9"])
    with pytest.raises(UserError, match="within 0:18"):
        parse_space(["unfreeze=0:30"])
    assert parse_space(["unfreeze=0:23"], arch="efficientnet_lite2")["unfreeze"].high == 23  # Lite2's 21 blocks
    assert default_space("efficientnet_lite2")["unfreeze"].high == 23
    with pytest.raises(UserError, match="LOW must be > 0"):
        parse_space(["weight_decay=0:1e-3"])
    space = parse_space(["batch_size=32,64", "unfreeze="])
    assert set(space) == {"lr", "batch_size"} and space["batch_size"].values == (32, 64)
    cfg = TrainConfig(num_workers=2)
    assert plan_concurrency(cfg, None, {"CPU": 4}) == 1
    with pytest.raises(UserError, match="--max-concurrent 3 needs more"):
        plan_concurrency(cfg, 3, {"CPU": 4})
    with pytest.raises(UserError, match="GPU"):
        plan_concurrency(TrainConfig(use_gpu=True), None, {"CPU": 8, "GPU": 0})
    assert plan_concurrency(TrainConfig(use_gpu=True, num_workers=2), None, {"CPU": 16, "GPU": 8}) == 4
    with pytest.raises(UserError, match="drop --final none"):  # a CV search always publishes its best config
        run_search(TrainConfig(data="x", cv=2, final="none"), space, TuneOptions())
    probe = TrainConfig(data="x", head_init="probe", unfreeze=0, lr=0.0, epochs=1)
    with pytest.raises(UserError, match="--lr 0 .*leaves nothing to train in a search"):
        run_search(probe, parse_space(["lr=", "unfreeze=0:2"]), TuneOptions())


def run_tune(args, env, **kw):
    return subprocess.Popen([sys.executable, str(ROOT / "ray_jobs" / "tune.py"), *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, **kw)


def test_cli_bad_search_input_exits_2_before_ray(project, tiny_folder):
    env = {**os.environ, "ANIMALCLF_HOME": str(project)}
    for extra, match in ((["--space", "lr=1:0.1"], "empty or inverted"), (["--space", "momentum=1:2"], "Unknown search parameter"),
                         (["--max-concurrent", "64"], "needs more than the cluster has")):
        p = run_tune(["--data", str(tiny_folder), "--arch", "efficientnet_lite0", "--num-workers", "1", *extra], env)
        out, _ = p.communicate(timeout=180)
        assert p.returncode == 2, out
        assert match in out and "Traceback" not in out
    assert not (project / "runs" / "ray" / "animalclf-tune").exists()


def finished_trials(project, experiment):
    """Trial ids whose MLflow child run is FINISHED (the trial function ends it last)."""

    client = MlflowClient(f"sqlite:///{project}/runs/mlflow.db")
    exp = client.get_experiment_by_name(experiment) if (project / "runs" / "mlflow.db").exists() else None
    if exp is None:
        return set()
    runs = client.search_runs([exp.experiment_id], "tags.`animalclf.kind` = 'trial' and attributes.status = 'FINISHED'")
    return {r.data.tags["animalclf.trial_id"] for r in runs}


@pytest.mark.slow
def test_resume_skips_finished_trials(ray_session, project, tiny_folder):
    env = {**os.environ, "ANIMALCLF_HOME": str(project), "PYTHONUNBUFFERED": "1"}  # RAY_ADDRESS: the session head
    args = ["--data", str(tiny_folder), "--arch", "efficientnet_lite0", "--image-size", "64", "--batch-size", "8",
            "--epochs", "2", "--unfreeze", "0", "--num-samples", "3", "--max-concurrent", "1", "--name", "resumable",
            "--experiment", "resume-test", "--space", "unfreeze=0:1"]
    log = open(project / "first.log", "w")
    p = subprocess.Popen([sys.executable, str(ROOT / "ray_jobs" / "tune.py"), *args], env=env, stdout=log,
                         stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 300
    while not (done := finished_trials(project, "resume-test")):
        assert p.poll() is None and time.time() < deadline, (project / "first.log").read_text()[-3000:]
        time.sleep(1)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    assert len(done) < 3
    client = MlflowClient(f"sqlite:///{project}/runs/mlflow.db")
    assert client.search_model_versions("name = 'animalclf'") == []  # a driver killed mid-search: nothing registered
    p2 = run_tune([*args, "--resume"], env)
    out, _ = p2.communicate(timeout=400)
    assert p2.returncode == 0, out[-3000:]
    for trial in done:
        assert f"Run resumable-{trial}: training" not in out  # finished trials were not run again
    state = json.loads((Path(out.rsplit("; report: ", 1)[1].split()[0]) / "search" / "trials.json").read_text())
    assert len(state) == 3 and all(t["status"] in ("COMPLETED", "STOPPED_BY_ASHA") and t["epochs"] >= 1 for t in state)
    assert done <= {t["trial_id"] for t in state}
    assert finished_trials(project, "resume-test") == {t["trial_id"] for t in state if t["status"] == "COMPLETED"}
    assert str(client.get_model_version_by_alias("animalclf", "champion").version) == "1"  # the resumed search promoted
