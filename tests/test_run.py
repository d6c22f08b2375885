"""The train job end to end on a real local Ray (2 gloo workers) and a real sqlite MLflow store."""

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from animalclf.config import TrainConfig
from animalclf.errors import UserError
from animalclf.data.decode import decode_image
from animalclf.models.predict import Predictor
from animalclf.train.run import run_training
from conftest import make_image_folder

ROOT = Path(__file__).resolve().parents[1]


def load_job():
    spec = importlib.util.spec_from_file_location("train_job", ROOT / "ray_jobs" / "train.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_lite2_probe_with_autocontrast_and_rotation_pool_serves_what_it_trained(ray_session, project, shared_data):
    """The demo's step 1 in small (64 px): Lite2, autocontrast, rotation pool, the probe alone (--lr 0).
    The probe's fit is the epoch's training (no idle pass over the data), the checkpoint says both
    options, and the Predictor built from it answers a quarter-turned photo exactly as the original
    and a darkened one nearly so."""
    from PIL import Image

    cfg = TrainConfig(data=str(shared_data), arch="efficientnet_lite2", unfreeze=0, image_size=64, batch_size=32, epochs=1,
                      lr=0.0, head_init="probe", autocontrast=True, rotation_pool=True, name="lite2-probe",
                      model_name="tiny-lite2", patience=0)
    out = run_training(cfg)
    metrics = MlflowClient().get_run(out.run_id).data.metrics
    assert metrics["train_seconds"] == metrics["probe_seconds"] and metrics["train_accuracy"] > 0.9
    assert out.report["accuracy"] > 0.5  # 15 classes, 64 px
    pred = Predictor.from_checkpoint(out.checkpoint)
    assert pred.meta["rotation_pool"] and pred.preprocess.autocontrast and pred.preprocess.crop_size == 64
    photo = decode_image(sorted((shared_data / "Zebra").iterdir())[0].read_bytes())
    photo = photo.crop((0, 0, min(photo.size), min(photo.size)))  # square: a turn keeps the same centre crop
    dark = photo.point(lambda v: v // 2)
    x = pred.tensor(photo)[None]
    assert torch.allclose(pred.predict_tensors(torch.rot90(x, 1, (2, 3))), pred.predict_tensors(x), atol=1e-5)  # exact
    answers = [pred.predict([im], top_k=15)[0] for im in (photo, photo.transpose(Image.Transpose.ROTATE_90), dark)]
    probs = [{t["class"]: t["probability"] for t in a} for a in answers]
    # a turned photo: the same up to the resize's 8-bit rounding, which PIL does in the other order
    assert answers[1][0]["class"] == answers[0][0]["class"] and probs[1] == pytest.approx(probs[0], abs=5e-3)
    assert answers[2][0]["class"] == answers[0][0]["class"] and probs[2] == pytest.approx(probs[0], abs=0.1)


@pytest.mark.slow
def test_two_worker_training_is_tracked_registered_and_loadable(ray_session, project, tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=8)
    good = next((data / "Red").glob("*.jpg")).read_bytes()
    (data / "Red" / "broken.jpg").write_bytes(good[:200])  # corrupt JPEG among good ones
    cfg = TrainConfig(data=str(data), arch="efficientnet_lite0", unfreeze=1, image_size=64, batch_size=8, epochs=2,
                      num_workers=2, lr=3e-3, name="t2w", model_name="tiny", patience=0)
    out = run_training(cfg)

    assert out.epochs_run == 2
    pred = Predictor.from_checkpoint(out.checkpoint)
    top = pred.predict([decode_image((data / "Green" / "green_0.jpg").read_bytes())], top_k=3)[0]
    assert set(t["class"] for t in top) == {"Blue", "Green", "Red"}
    assert abs(sum(t["probability"] for t in top) - 1) < 1e-4
    # The served Predictor and the report agree image by image on the validation split.
    from animalclf.data.source import source_of

    val = source_of(cfg).split(cfg.val_ratio, cfg.seed).val
    right = sum(pred.predict([decode_image(Path(p).read_bytes())], top_k=1)[0][0]["class"] == pred.classes[y] for p, y in val)
    assert right / len(val) == pytest.approx(out.report["accuracy"])

    client = MlflowClient()
    run = client.get_run(out.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["arch"] == "efficientnet_lite0" and run.data.params["num_workers"] == "2"
    assert run.data.params["train_images"] == "18" and run.data.params["val_images"] == "6"  # broken.jpg skipped
    history = client.get_metric_history(out.run_id, "val_accuracy")
    assert sorted(m.step for m in history) == [1, 2]
    # the report is over the whole validation split (6 images), not one worker's shard of 3
    assert out.report["support"] == 6
    assert client.get_metric_history(out.run_id, "val_images")[0].value == 6
    artifacts = {a.path for a in client.list_artifacts(out.run_id, "report")}
    assert {"report/report.json", "report/report.html"} <= artifacts
    assert {a.path for a in client.list_artifacts(out.run_id, "checkpoint")} >= {"checkpoint/model.pt", "checkpoint/animalclf.json"}
    version = client.get_model_version("tiny", out.model_version)
    assert version.run_id == out.run_id
    from_registry = Predictor.load(f"models:/tiny/{out.model_version}")
    assert from_registry.classes == ["Blue", "Green", "Red"]


def _alive(class_name: str) -> set[str]:
    from ray.util.state import list_actors

    return {a.actor_id for a in list_actors(filters=[("class_name", "=", class_name), ("state", "=", "ALIVE")])}


@pytest.mark.slow
@pytest.mark.parametrize("own_head", [True, False], ids=["own-head", "others-head"])
def test_ctrl_c_mid_training_ends_the_run_killed_and_leaves_no_training_behind(own_head, ray_session, project, tiny_folder,
                                                                                monkeypatch):
    """SIGINT once Ray Train's workers run: KeyboardInterrupt, the MLflow run KILLED, its controller
    and workers gone, the caller's SIGINT handler back. On a Ray this process started and stops (the
    session's head, like the demo's) our handler kills the controller at once; on a Ray of others'
    Ray Train's own handler aborts the run gracefully."""
    from ray.util.state import get_actor

    from animalclf.runtime import localray

    if not own_head:
        monkeypatch.setattr(localray, "_driven", [])
    before = {"controllers": _alive("TrainController"), "workers": _alive("RayTrainWorker")}
    seen = {}

    def interrupt_once_training():
        deadline = time.monotonic() + 180
        while not _alive("RayTrainWorker") - before["workers"] and time.monotonic() < deadline:
            time.sleep(0.5)
        seen["handler"] = signal.getsignal(signal.SIGINT)
        seen["controllers"] = _alive("TrainController") - before["controllers"]
        seen["workers"] = _alive("RayTrainWorker") - before["workers"]
        os.kill(os.getpid(), signal.SIGINT)

    cfg = TrainConfig(data=str(tiny_folder), arch="efficientnet_lite0", unfreeze=1, image_size=64, batch_size=4,
                      epochs=50, lr=1e-3, name="ctrl-c", model_name="ctrl-c", experiment="ctrl-c", patience=0)
    handler = signal.getsignal(signal.SIGINT)
    watcher = threading.Thread(target=interrupt_once_training, daemon=True)
    watcher.start()
    with pytest.raises(KeyboardInterrupt):
        run_training(cfg)
    watcher.join(5)
    expected = "_kill_on_sigint.<locals>.on_sigint" if own_head else "_register_sigint_handler.<locals>.sigint_handler"
    assert seen["handler"].__qualname__.endswith(expected), seen["handler"]
    assert signal.getsignal(signal.SIGINT) is handler
    assert len(seen["controllers"]) == 1 and seen["workers"], seen
    deadline = time.monotonic() + 60
    while any(get_actor(a).state != "DEAD" for a in seen["controllers"] | seen["workers"]):
        assert time.monotonic() < deadline, [get_actor(a) for a in seen["controllers"] | seen["workers"]]
        time.sleep(0.5)
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("ctrl-c").experiment_id])
    assert [r.info.status for r in runs] == ["KILLED"]
    assert not client.search_registered_models("name = 'ctrl-c'")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_worker_fine_tune_beats_chance_on_the_shared_photos(ray_session, project, shared_data):
    """2 gloo workers, 2 short epochs on the real photos: far above chance (1 in the class count)."""
    cfg = TrainConfig(data=str(shared_data), arch="efficientnet_lite0", unfreeze=2, image_size=96, batch_size=32,
                      epochs=2, num_workers=2, lr=1e-3, name="chance", track=False, patience=0)
    out = run_training(cfg)
    chance = 1 / len(out.report["classes"])
    assert out.report["accuracy"] >= max(0.5, 5 * chance), out.report["accuracy"]


@pytest.mark.slow
def test_a_run_with_another_setup_is_refused_before_it_starts(ray_session, project, tmp_path):
    """Same --name, other --unfreeze: one clear error before any MLflow run or worker, not an
    optimizer-group mismatch inside the worker; the same setup resumes."""
    data = make_image_folder(tmp_path / "data", per_class=6)
    cfg = TrainConfig(data=str(data), arch="efficientnet_lite0", unfreeze=0, image_size=32, batch_size=8, epochs=1,
                      name="same-name", experiment="resume-check", model_name=None, patience=0)
    run_training(cfg)
    client = MlflowClient()
    runs_before = client.search_runs([client.get_experiment_by_name("resume-check").experiment_id])
    with pytest.raises(UserError, match=r"Run 'same-name' .* another setup \(unfreeze 0 -> 1\).*another --name"):
        run_training(cfg.replace(unfreeze=1, epochs=2))
    assert len(client.search_runs([client.get_experiment_by_name("resume-check").experiment_id])) == len(runs_before)
    assert run_training(cfg.replace(epochs=2)).epochs_run == 2  # the same setup resumes


@pytest.mark.parametrize("argv,env,match", [
    (["--data", "{tmp}/missing"], {}, "does not exist"),
    (["--data", "{empty_class}"], {}, "no readable image"),
    (["--data", "{data}", "--arch", "resnet9"], {}, "Unknown arch"),
    (["--data", "{data}", "--unfreeze", "40"], {}, "out of range"),
    (["--data", "{data}", "--arch", "efficientnet_lite0"], {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}, "unreachable"),
    (["--data", "{data}", "--arch", "efficientnet_lite0", "--teacher", "{tmp}/nowhere"], {}, "nor a checkpoint directory"),
    (["--data", "{data}", "--arch", "efficientnet_lite0", "--teacher"], {}, "Could not resolve models:/animalclf@champion"),
])
def test_bad_input_is_one_line_and_exit_2(argv, env, match, project, tmp_path, tiny_folder, monkeypatch, capsys):
    empty_class = tmp_path / "ec"
    shutil.copytree(tiny_folder, empty_class)
    (empty_class / "Void").mkdir()
    argv = [a.format(tmp=tmp_path, data=tiny_folder, empty_class=empty_class) for a in argv]
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    job = load_job()
    code = job.run_main(job.main, job.get_args_parser(), argv)
    err = [line for line in capsys.readouterr().err.strip().splitlines() if " INFO " not in line]  # progress lines
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and match in err[0], err
    assert not (project / "runs" / "ray").exists()  # nothing started, nothing half-written


def test_cli_exit_code_in_a_real_process(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "ray_jobs" / "train.py"), "--data", str(tmp_path / "nope")],
                       capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "ANIMALCLF_HOME": str(tmp_path)})
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error: Data folder")
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("stopped, status", [(False, "FAILED"), (True, "KILLED")])
def test_a_run_whose_training_fails_ends_failed_unless_its_caller_stopped_it(stopped, status, ray_session, store,
                                                                              monkeypatch):
    # A Tune trial that ASHA stopped fails while Tune tears it down, possibly after the search closed
    # its run KILLED: that failure must not turn it into FAILED (animalclf.tune.trial.stop_flag).
    import animalclf.train.run as run
    from animalclf.data.split import Split
    from animalclf.tracking import Tracker

    class Breaks:
        def fit(self):
            raise RuntimeError("the trial's controller is gone")

    monkeypatch.setattr(run, "make_trainer", lambda *a, **k: Breaks())
    tracker = Tracker.start("stops", "trial")
    split = Split(["a", "b"], [("/d/a0.jpg", 0), ("/d/b0.jpg", 1)], [("/d/a1.jpg", 0)])
    with pytest.raises(RuntimeError, match="controller is gone"):
        run.fit(TrainConfig(data="x", experiment="stops"), split, tracker, stopped=lambda: stopped)
    assert store.get_run(tracker.run_id).info.status == status
